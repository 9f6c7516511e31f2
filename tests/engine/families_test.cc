// The model family registry (engine/model/registry.h) and its LibTorch-free counting, and the
// DeepSeek-V3 blocks on the CPU without HF (HF parity is tests/python/test_deepseek_parity.py):
// - counts: Qwen3-MoE's are those of before the registry (tiny preset and Qwen3-30B-A3B, exact),
//   DeepSeek-V3's 671B / 37.6B and Moonlight's 16.0B / 2.9B; FLOPs per token by the formula;
// - the layout's names are unique and are exactly the checkpoint's keys;
// - config errors name the DeepSeek-V3 field;
// - the router: the selection bias moves the choice, never the weights; group-limited top-k
//   picks only from the best groups (against a brute-force reference); the bias update.
#include <set>
#include <string>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <nlohmann/json.hpp>

#include "engine/model/config.h"
#include "engine/model/core/moe/router.h"
#include "engine/model/hf_checkpoint.h"
#include "engine/model/registry.h"
#include "engine/model/tensor_layout.h"
#include "engine/model/transformer.h"
#include "tests/engine/packed_row_test_util.h"
#include "gtest/gtest.h"

namespace ftd::engine {
namespace {

TEST(ModelFamilies, RegistryNamesEveryFamilyAndItsPresets) {
  EXPECT_EQ(SupportedModelTypes(), "qwen3_moe, deepseek_v3, mixtral, qwen2_moe, olmoe, gpt_oss, nemotron_h");
  ASSERT_NE(FindModelFamily("mixtral"), nullptr);
  EXPECT_STREQ(FindModelFamily("olmoe")->display_name(), "OLMoE");
  ASSERT_NE(FindModelFamily("deepseek_v3"), nullptr);
  EXPECT_STREQ(FindModelFamily("deepseek_v3")->display_name(), "DeepSeek-V3");
  EXPECT_EQ(FindModelFamily("llama"), nullptr);
  for (const std::string& name : PresetNames()) {
    auto c = PresetConfig(name);
    ASSERT_TRUE(c.ok()) << name << ": " << c.status();
    // A preset survives its own config.json (what init-model writes and the engine reads).
    auto again = ParseModelConfig(ModelConfigToJson(*c), name);
    ASSERT_TRUE(again.ok()) << name << ": " << again.status();
    EXPECT_EQ(again->TotalParameters(), c->TotalParameters()) << name;
    EXPECT_EQ(ModelConfigToJson(*again), ModelConfigToJson(*c)) << name;
  }
}

TEST(ModelFamilies, Qwen3CountsAreUnchanged) {
  // The values of the counting code before the registry (engine/model/config.cc at 977f2fd).
  ModelConfig tiny = *PresetConfig("tiny");
  EXPECT_EQ(tiny.TotalParameters(), 226848);
  EXPECT_EQ(tiny.ActiveParameters(), 153120);
  ModelConfig q30 = *PresetConfig("qwen3-30b-a3b");
  EXPECT_EQ(q30.TotalParameters(), 30532122624);
  EXPECT_EQ(q30.ActiveParameters(), 3353032704);
}

TEST(ModelFamilies, MixtralQwen2MoeOlmoeCountsAsPublished) {
  // The model cards: Mixtral-8x7B 46.7B / 12.9B active, Qwen1.5-MoE-A2.7B 14.3B / 2.7B,
  // Qwen2-57B-A14B 57.4B / 14.2B, OLMoE-1B-7B 6.9B / 1.3B (exact values: the layout's; the same
  // as transformers counts, tests/python/test_moe_families_parity.py).
  struct Want {
    const char* preset;
    int64_t total, active;
  };
  for (const Want& w : {Want{"mixtral-8x7b", 46702792704, 12879925248},
                        Want{"qwen1.5-moe-a2.7b", 14315784192, 2689173504},
                        Want{"qwen2-57b-a14b", 57408658944, 14249270784},
                        Want{"olmoe-1b-7b", 6919161856, 1282017280}}) {
    ModelConfig c = *PresetConfig(w.preset);
    EXPECT_EQ(c.TotalParameters(), w.total) << w.preset;
    EXPECT_EQ(c.ActiveParameters(), w.active) << w.preset;
    EXPECT_EQ(c.NumMoeLayers(), c.num_hidden_layers) << w.preset;
  }
}

TEST(ModelFamilies, GqaMoeSlidingWindowsAndUnimplementedSettingsAreRefusedByName) {
  auto error = [](const std::string& json) {
    auto c = ParseModelConfig(json, "x/config.json");
    return c.ok() ? std::string("ok") : std::string(c.status().message());
  };
  const std::string mixtral = R"({"model_type": "mixtral", "vocab_size": 32, "hidden_size": 16,
    "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "num_local_experts": 4,
    "num_experts_per_tok": 2)";
  EXPECT_EQ(error(mixtral + "}"), "ok");
  auto sliding = ParseModelConfig(mixtral + R"(, "sliding_window": 4096})");
  ASSERT_TRUE(sliding.ok()) << sliding.status();
  EXPECT_TRUE(sliding->IsSlidingLayer(0));
  EXPECT_EQ(sliding->sliding_window, 4096);
  EXPECT_NE(error(mixtral + R"(, "sliding_window": -1})").find("\"sliding_window\""), std::string::npos);
  EXPECT_NE(error(mixtral + R"(, "router_jitter_noise": 0.01})").find("router_jitter_noise"), std::string::npos);
  const std::string qwen2 = R"({"model_type": "qwen2_moe", "vocab_size": 32, "hidden_size": 16,
    "intermediate_size": 8, "moe_intermediate_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2,
    "num_experts": 4, "num_experts_per_tok": 2)";
  // HF ignores sliding_window unless use_sliding_window is true.
  auto full = ParseModelConfig(qwen2 + R"(, "sliding_window": 4096})");
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_FALSE(full->IsSlidingLayer(0));
  auto windowed = ParseModelConfig(qwen2 + R"(, "use_sliding_window": true, "sliding_window": 64})");
  ASSERT_TRUE(windowed.ok()) << windowed.status();
  EXPECT_TRUE(windowed->IsSlidingLayer(0));  // layer 0 < max_window_layers (28), l + 1 odd
  EXPECT_NE(error(qwen2 + R"(, "layer_types": ["sliding_attention"]})").find("\"use_sliding_window\" is false"),
            std::string::npos);
  EXPECT_NE(error(qwen2 + R"(, "layer_types": ["full_attention", "full_attention"]})").find("\"layer_types\" has 2"),
            std::string::npos);
  // Qwen3-MoE's sliding window is not implemented.
  const std::string qwen3 = R"({"model_type": "qwen3_moe", "vocab_size": 32, "hidden_size": 16,
    "intermediate_size": 8, "moe_intermediate_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2,
    "num_experts": 4, "num_experts_per_tok": 2)";
  EXPECT_NE(error(qwen3 + R"(, "use_sliding_window": true})").find("x/config.json: \"use_sliding_window\""),
            std::string::npos);
  const std::string olmoe = R"({"model_type": "olmoe", "vocab_size": 32, "hidden_size": 16,
    "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "num_experts": 4,
    "num_experts_per_tok": 2)";
  EXPECT_EQ(error(olmoe + R"(, "clip_qkv": null})"), "ok");
  EXPECT_NE(error(olmoe + R"(, "clip_qkv": -1})").find("clip_qkv"), std::string::npos);
  EXPECT_NE(error(olmoe + R"(, "head_dim": 4})").find("head_dim"), std::string::npos);
  EXPECT_NE(error(R"({"model_type": "olmoe", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 8,
    "num_hidden_layers": 1, "num_attention_heads": 2, "num_experts_per_tok": 2})").find("num_experts"),
            std::string::npos);
}

TEST(ModelFamilies, DeepseekCountsAndFlops) {
  ModelConfig v3 = *PresetConfig("deepseek-v3");
  EXPECT_EQ(v3.TotalParameters(), 671026404352);  // "671B total parameters"
  EXPECT_EQ(v3.ActiveParameters(), 37552282624);  // "37B activated"
  EXPECT_EQ(v3.NumMoeLayers(), 58);
  ModelConfig moonlight = *PresetConfig("moonlight-16b-a3b");
  EXPECT_EQ(moonlight.TotalParameters(), 15960108544);
  EXPECT_EQ(moonlight.ActiveParameters(), 2914774528);
  // 4 layers at seq 4096: 6 x (GEMM weights a token passes + V·H) + L·3·S·Hq·(192 + 128); the
  // same number bench/hf_v5_baseline.py computes from HF's parameters (4.25852928 GFLOP).
  moonlight.num_hidden_layers = 4;
  EXPECT_EQ(moonlight.TotalParameters(), 2508607488);  // HF DeepseekV3ForCausalLM's num_parameters
  EXPECT_NEAR(moonlight.TrainingFlopsPerToken(4096), 4.25852928e9, 1e3);
  ParameterCounts counts = CountParameters(v3);
  EXPECT_EQ(counts.total, counts.dense + counts.expert);
  EXPECT_EQ(counts.buffers, 58 * 256);  // the selection biases
  EXPECT_GT(counts.max_layer_dense, 0);
  EXPECT_LT(counts.layer_dense, counts.dense);
}

TEST(ModelFamilies, LayoutNamesAreTheCheckpointKeys) {
  for (const char* preset : {"tiny", "tiny-deepseek-v3"}) {
    SCOPED_TRACE(preset);
    ModelConfig c = *PresetConfig(preset);
    std::set<std::string> names;
    for (const TensorSpec& t : ModelTensorLayout(c)) EXPECT_TRUE(names.insert(t.name).second) << t.name;
    ModelOptions o;
    ModelWeights w = InitRandomWeights(c, o, 1);
    std::set<std::string> keys;
    int64_t stored = 0;
    for (auto& [name, t] : ToHfTensors(w, c, o, at::kFloat)) {
      EXPECT_TRUE(keys.insert(name).second) << name;
      stored += t.numel();
    }
    const ParameterCounts counts = CountParameters(c);
    EXPECT_EQ(stored, counts.total + counts.buffers);
    // Every layout name is a key, except fused experts, which are per-expert keys.
    for (const std::string& n : names) {
      if (n.find(".mlp.experts.") == std::string::npos) EXPECT_TRUE(keys.count(n)) << n;
    }
    EXPECT_TRUE(keys.count("model.layers.2.mlp.experts.7.down_proj.weight"));
  }
}

// Packed documents under a sliding window: each document's logits are those of the document alone
// (the window never reaches across a boundary), and the window changes them against full attention.
TEST(ModelFamilies, SlidingWindowStaysInsideEachPackedDocument) {
  ModelConfig c = *PresetConfig("tiny-mixtral");
  c.sliding_window = 3;
  c.layer_types.assign(static_cast<size_t>(c.num_hidden_layers), "sliding_attention");
  ModelOptions o;
  auto run = [&](const ModelConfig& config, const at::Tensor& ids, const at::Tensor& positions,
                 const at::Tensor& segments) {
    auto model = *MoeTransformer::Create(config, o, InitRandomWeights(config, o, 5));
    Batch b;
    b.input_ids = ids;
    b.position_ids = positions;
    b.segment_ids = segments;
    return model->Forward(b, /*return_logits=*/true).logits;
  };
  at::manual_seed(3);
  at::Tensor ids = at::randint(0, c.vocab_size, {1, 13}, at::kLong);
  at::Tensor segments = at::cat({at::zeros({1, 6}, at::kLong), at::ones({1, 7}, at::kLong)}, 1);
  at::Tensor positions = at::cat({at::arange(6, at::kLong), at::arange(7, at::kLong)}).unsqueeze(0);
  at::Tensor packed = run(c, ids, positions, segments);
  at::Tensor first = run(c, ids.narrow(1, 0, 6), at::arange(6, at::kLong).unsqueeze(0), {});
  at::Tensor second = run(c, ids.narrow(1, 6, 7), at::arange(7, at::kLong).unsqueeze(0), {});
  EXPECT_TRUE(at::allclose(packed.narrow(1, 0, 6), first, 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(packed.narrow(1, 6, 7), second, 1e-5, 1e-5));
  ModelConfig full = c;
  full.sliding_window = 0;
  at::Tensor unwindowed = run(full, ids.narrow(1, 6, 7), at::arange(7, at::kLong).unsqueeze(0), {});
  EXPECT_FALSE(at::allclose(second, unwindowed, 1e-5, 1e-5));
  // Inside the window (the first 3 tokens) both agree.
  EXPECT_TRUE(at::allclose(second.narrow(1, 0, 3), unwindowed.narrow(1, 0, 3), 1e-5, 1e-5));
}

// MLA (the tiny DeepSeek-V3: q_lora, interleaved YaRN rotary, a dense first layer) on a packed
// row: each document's logits, the loss and every gradient equal the documents' run alone.
TEST(ModelFamilies, DeepseekPackedRowEqualsItsDocuments) {
  ModelConfig c = *PresetConfig("tiny-deepseek-v3");
  ModelOptions o;
  ModelWeights init = InitRandomWeights(c, o, 13);
  testing::PackedRowRun run = testing::RunPackedRowAndDocuments(c, o, init, 7, 9, 3);
  testing::ExpectPackedRowEqualsDocuments(run);
}

TEST(ModelFamilies, DeepseekConfigErrorsNameTheField) {
  std::string base = ModelConfigToJson(*PresetConfig("tiny-deepseek-v3"));
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = base;
    size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return ParseModelConfig(s.replace(at, from.size(), to), "ds/config.json");
  };
  auto groups = with("\"n_group\": 4", "\"n_group\": 3");
  ASSERT_FALSE(groups.ok());
  EXPECT_NE(groups.status().message().find("n_group"), std::string::npos) << groups.status();
  auto topk = with("\"topk_group\": 2", "\"topk_group\": 5");
  ASSERT_FALSE(topk.ok());
  EXPECT_NE(topk.status().message().find("topk_group"), std::string::npos) << topk.status();
  auto missing = with("\"kv_lora_rank\": 32,", "");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("kv_lora_rank"), std::string::npos);
  EXPECT_NE(missing.status().message().find("ds/config.json"), std::string::npos);
  auto scoring = with("\"n_group\": 4", "\"n_group\": 4, \"scoring_func\": \"softmax\"");
  ASSERT_FALSE(scoring.ok());
  EXPECT_NE(scoring.status().message().find("scoring_func"), std::string::npos);
  auto qlora_null = with("\"q_lora_rank\": 48", "\"q_lora_rank\": null");
  ASSERT_TRUE(qlora_null.ok()) << qlora_null.status();
  EXPECT_EQ(qlora_null->mla.q_lora_rank, 0);  // Moonlight's layout: one q_proj
}

// A saved config.json keeps the source's fields the family does not model (vLLM builds DeepSeek-V3's
// correction bias only when topk_method says noaux_tc), but never quantization_config (the saved
// weights are unquantised) nor the stale dtype names, and a carried field never overrides the
// family's own value.
TEST(ModelFamilies, SavedConfigCarriesTheSourcesUnmodelledFields) {
  std::string text = ModelConfigToJson(*PresetConfig("tiny-deepseek-v3"));
  text.insert(text.find('{') + 1,
              "\"topk_method\": \"noaux_tc\", \"scoring_func\": \"sigmoid\", \"auto_map\": {\"AutoConfig\": "
              "\"configuration_deepseek.DeepseekV3Config\"}, \"moe_layer_freq\": 1, \"torch_dtype\": \"float16\", "
              "\"quantization_config\": {\"quant_method\": \"fp8\"},");
  absl::StatusOr<ModelConfig> parsed = ParseModelConfig(text, "ds/config.json");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  parsed->dtype = "bfloat16";  // as a save in bf16 sets it
  const nlohmann::json saved = nlohmann::json::parse(ModelConfigToJson(*parsed));
  EXPECT_EQ(saved.at("topk_method"), "noaux_tc");
  EXPECT_EQ(saved.at("scoring_func"), "sigmoid");
  EXPECT_EQ(saved.at("auto_map").at("AutoConfig"), "configuration_deepseek.DeepseekV3Config");
  EXPECT_EQ(saved.at("moe_layer_freq"), 1);
  EXPECT_FALSE(saved.contains("quantization_config"));
  EXPECT_FALSE(saved.contains("torch_dtype"));
  EXPECT_EQ(saved.at("dtype"), "bfloat16");
  // Saved, read and saved again: the same text.
  absl::StatusOr<ModelConfig> again = ParseModelConfig(ModelConfigToJson(*parsed), "saved/config.json");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(ModelConfigToJson(*again), ModelConfigToJson(*parsed));
  // A carried field never overrides one the family writes.
  ModelConfig clash = *parsed;
  clash.carried_fields_json = R"({"n_group": 99, "extra": true})";
  const nlohmann::json clashed = nlohmann::json::parse(ModelConfigToJson(clash));
  EXPECT_EQ(clashed.at("n_group"), parsed->n_group);
  EXPECT_EQ(clashed.at("extra"), true);
  // A preset has nothing to carry: its config.json is the family's alone.
  const ModelConfig preset = *PresetConfig("tiny-deepseek-v3");
  EXPECT_TRUE(preset.carried_fields_json.empty());
  EXPECT_FALSE(nlohmann::json::parse(ModelConfigToJson(preset)).contains("topk_method"));
}

at::Tensor Randn(std::vector<int64_t> shape, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::normal(0.0, 1.0, shape, gen, at::TensorOptions().dtype(at::kFloat));
}

TEST(DeepseekRouter, BiasMovesTheChoiceNotTheWeights) {
  ModelConfig c = *PresetConfig("tiny-deepseek-v3");
  c.n_group = 1;
  c.topk_group = 1;
  at::Tensor x = Randn({16, c.hidden_size}, 1), w = Randn({c.num_experts, c.hidden_size}, 2) * 0.1;
  Routing plain = Route(x, w, c, GateMode::kReal);
  // A large bias on expert 5: every token picks it, with its own (unbiased) sigmoid weight.
  at::Tensor bias = at::zeros({c.num_experts});
  bias[5] = 10.0f;
  Routing biased = Route(x, w, c, GateMode::kReal, bias);
  EXPECT_TRUE(biased.experts.eq(5).any(1).all().item<bool>());
  at::Tensor scores = at::sigmoid(at::linear(x, w));
  at::Tensor chosen = scores.gather(1, biased.experts);
  at::Tensor expect = chosen / (chosen.sum(-1, true) + 1e-20) * c.routed_scaling_factor;
  EXPECT_TRUE(at::allclose(biased.weights, expect, 1e-6, 1e-7));
  EXPECT_FALSE(at::equal(plain.experts, biased.experts));
}

TEST(DeepseekRouter, GroupLimitedTopKPicksFromTheBestGroups) {
  ModelConfig c = *PresetConfig("tiny-deepseek-v3");  // 8 experts in 4 groups of 2, top 2 groups, k = 2
  c.num_experts = 16;  // 4 groups of 4: the "two best" of a group differs from its best
  c.num_experts_per_tok = 3;
  at::Tensor x = Randn({64, c.hidden_size}, 3), w = Randn({c.num_experts, c.hidden_size}, 4) * 0.3;
  at::Tensor bias = Randn({c.num_experts}, 5) * 0.05;
  Routing r = Route(x, w, c, GateMode::kReal, bias);
  at::Tensor sel = at::sigmoid(at::linear(x, w)) + bias;
  for (int64_t t = 0; t < x.size(0); ++t) {
    // Brute force: each group's two best summed, the topk_group best groups, the k best experts in them.
    std::vector<std::pair<float, int64_t>> groups;
    for (int64_t g = 0; g < c.n_group; ++g) {
      std::vector<float> v;
      for (int64_t e = g * 4; e < g * 4 + 4; ++e) v.push_back(sel[t][e].item<float>());
      std::sort(v.rbegin(), v.rend());
      groups.push_back({v[0] + v[1], g});
    }
    std::sort(groups.rbegin(), groups.rend());
    std::vector<std::pair<float, int64_t>> candidates;
    for (int64_t i = 0; i < c.topk_group; ++i) {
      for (int64_t e = groups[i].second * 4; e < groups[i].second * 4 + 4; ++e) {
        candidates.push_back({sel[t][e].item<float>(), e});
      }
    }
    std::sort(candidates.rbegin(), candidates.rend());
    std::set<int64_t> want, got;
    for (int64_t j = 0; j < c.num_experts_per_tok; ++j) {
      want.insert(candidates[j].second);
      got.insert(r.experts[t][j].item<int64_t>());
    }
    EXPECT_EQ(got, want) << "token " << t;
  }
}

TEST(DeepseekRouter, BiasUpdateMovesTowardsBalance) {
  at::Tensor bias = at::zeros({4});
  UpdateSelectionBias(bias, at::tensor({10.0, 2.0, 4.0, 4.0}), 0.01);  // mean 5
  EXPECT_TRUE(at::allclose(bias, at::tensor({-0.01f, 0.01f, 0.01f, 0.01f})));
  UpdateSelectionBias(bias, at::tensor({5.0, 5.0, 5.0, 5.0}), 0.01);  // balanced: unchanged
  EXPECT_TRUE(at::allclose(bias, at::tensor({-0.01f, 0.01f, 0.01f, 0.01f})));
}

}  // namespace
}  // namespace ftd::engine
