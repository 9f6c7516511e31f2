// Engine model tests that need no HF install: config parsing errors, checkpoint loading errors,
// the MoE block against a per-token reference, activation checkpointing, the balanced gate.
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "common/file_util.h"
#include "engine/io/safetensors.h"
#include "engine/model/config.h"
#include "engine/model/hf_checkpoint.h"
#include "engine/model/core/moe/moe_block.h"
#include "engine/model/transformer.h"
#include "engine/train/lr_schedule.h"
#include "engine/train/token_dataset.h"
#include "gtest/gtest.h"

namespace ftd::engine {
namespace {

namespace fs = std::filesystem;

std::string TempDir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("ftd_model_test_" + name + "_" + std::to_string(::getpid()));
  EXPECT_TRUE(RemoveTree(p.string()).ok());
  fs::create_directories(p);
  return p.string();
}

const char* kMinimalConfig = R"({"model_type": "qwen3_moe", "vocab_size": 64, "hidden_size": 16,
  "intermediate_size": 24, "moe_intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "head_dim": 4, "num_local_experts": 5, "num_experts_per_tok": 2,
  "mlp_only_layers": [1], "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}})";

TEST(ModelConfig, ParsesV5FieldsAndLayerKinds) {
  auto c = ParseModelConfig(kMinimalConfig);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_experts, 5);  // from num_local_experts
  EXPECT_TRUE(c->IsMoeLayer(0));
  EXPECT_FALSE(c->IsMoeLayer(1));
  EXPECT_EQ(c->NumMoeLayers(), 1);
  EXPECT_DOUBLE_EQ(c->rope.theta, 10000.0);
}

TEST(ModelConfig, ErrorsNameTheField) {
  auto unknown = ParseModelConfig(R"({"model_type": "llama"})", "x/config.json");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("llama"), std::string::npos);
  EXPECT_NE(unknown.status().message().find("x/config.json"), std::string::npos);

  std::string wrong_type = kMinimalConfig;
  wrong_type.replace(wrong_type.find("\"hidden_size\": 16"), 17, "\"hidden_size\": \"16\"");
  auto bad = ParseModelConfig(wrong_type);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("hidden_size"), std::string::npos);

  std::string missing = kMinimalConfig;
  missing.replace(missing.find("\"vocab_size\": 64,"), 17, "");
  auto miss = ParseModelConfig(missing);
  ASSERT_FALSE(miss.ok());
  EXPECT_NE(miss.status().message().find("vocab_size"), std::string::npos);

  auto not_json = ParseModelConfig("{not json");
  EXPECT_FALSE(not_json.ok());

  std::string rope = kMinimalConfig;
  rope.replace(rope.find("\"default\""), 9, "\"dynamic\"");
  auto bad_rope = ParseModelConfig(rope);
  ASSERT_FALSE(bad_rope.ok());
  EXPECT_NE(bad_rope.status().message().find("dynamic"), std::string::npos);
}

TEST(ModelConfig, FlopsFormulaMatchesDesignAnchor) {
  auto c = PresetConfig("qwen3-30b-a3b");
  ASSERT_TRUE(c.ok());
  // DESIGN.md: ≈ 23.1 GFLOP/token at S=4096 for Qwen3-30B-A3B.
  EXPECT_NEAR(c->TrainingFlopsPerToken(4096) / 1e9, 23.1, 0.15);
}

class CheckpointErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir("ckpt");
    auto c = ParseModelConfig(kMinimalConfig);
    ASSERT_TRUE(c.ok());
    config_ = *c;
    ModelWeights w = InitRandomWeights(config_, options_, 3);
    ASSERT_TRUE(SaveHfCheckpoint(dir_, config_, w, options_, at::kFloat).ok());
    tensors_ = ToHfTensors(w, config_, options_, at::kFloat);
  }
  void Rewrite(const std::string& drop, const std::string& reshape) {
    std::vector<std::pair<std::string, at::Tensor>> kept;
    for (auto& [name, t] : tensors_) {
      if (name == drop) continue;
      kept.emplace_back(name, name == reshape ? at::zeros({3, 3}) : t);
    }
    fs::remove(dir_ + "/model.safetensors");
    ASSERT_TRUE(SaveSafetensors(dir_, kept).ok());
  }
  std::string dir_;
  ModelConfig config_;
  ModelOptions options_;
  std::vector<std::pair<std::string, at::Tensor>> tensors_;
};

TEST_F(CheckpointErrors, RoundTripLoadsEqualWeights) {
  auto w = LoadHfWeights(dir_, config_, options_);
  ASSERT_TRUE(w.ok()) << w.status();
  auto again = ToHfTensors(*w, config_, options_, at::kFloat);
  ASSERT_EQ(again.size(), tensors_.size());
  for (size_t i = 0; i < again.size(); ++i) {
    EXPECT_EQ(again[i].first, tensors_[i].first);
    EXPECT_TRUE(at::equal(again[i].second, tensors_[i].second)) << again[i].first;
  }
}

TEST_F(CheckpointErrors, MissingExpertKeyIsNamed) {
  const std::string key = "model.layers.0.mlp.experts.3.up_proj.weight";
  Rewrite(key, "");
  auto w = LoadHfWeights(dir_, config_, options_);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(w.status().message().find(key), std::string::npos) << w.status();
}

TEST_F(CheckpointErrors, MisshapedTensorIsNamed) {
  const std::string key = "model.layers.1.mlp.down_proj.weight";
  Rewrite("", key);
  auto w = LoadHfWeights(dir_, config_, options_);
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find(key), std::string::npos) << w.status();
}

TEST_F(CheckpointErrors, ExpertShardLoadsOnlyItsExperts) {
  ModelOptions shard = options_;
  shard.expert_begin = 2;
  shard.expert_count = 3;
  auto full = LoadHfWeights(dir_, config_, options_);
  auto part = LoadHfWeights(dir_, config_, shard);
  ASSERT_TRUE(full.ok() && part.ok());
  EXPECT_TRUE(at::equal(part->layers[0].moe.gate_up, full->layers[0].moe.gate_up.narrow(0, 2, 3)));
  EXPECT_TRUE(at::equal(part->layers[0].moe.down, full->layers[0].moe.down.narrow(0, 2, 3)));
  // Random init is sharding-independent too.
  ModelWeights a = InitRandomWeights(config_, options_, 9), b = InitRandomWeights(config_, shard, 9);
  EXPECT_TRUE(at::equal(b.layers[0].moe.gate_up, a.layers[0].moe.gate_up.narrow(0, 2, 3)));
}

TEST(MoeBlock, MatchesPerTokenReference) {
  auto c = ParseModelConfig(kMinimalConfig);
  ASSERT_TRUE(c.ok());
  c->norm_topk_prob = true;
  ModelOptions o;
  ModelWeights w = InitRandomWeights(*c, o, 5);
  const MoeWeights& m = w.layers[0].moe;
  at::manual_seed(0);
  at::Tensor x = at::randn({2, 7, c->hidden_size});
  MoeOutput out = MoeBlock(x, m, *c, GateMode::kReal, nullptr);
  // Reference: every token through its top-k experts one at a time.
  at::Tensor flat = x.reshape({-1, c->hidden_size});
  at::Tensor probs = at::softmax(at::linear(flat, m.router), -1);
  auto [tv, ti] = probs.topk(c->num_experts_per_tok, -1);
  tv = tv / tv.sum(-1, true);
  const int64_t F = c->moe_intermediate_size;
  at::Tensor ref = at::zeros_like(flat);
  for (int64_t t = 0; t < flat.size(0); ++t) {
    for (int64_t j = 0; j < c->num_experts_per_tok; ++j) {
      int64_t e = ti[t][j].item<int64_t>();
      at::Tensor h = at::matmul(flat[t], m.gate_up[e]);
      at::Tensor a = at::silu(h.narrow(0, 0, F)) * h.narrow(0, F, F);
      ref[t] += tv[t][j] * at::matmul(a, m.down[e]);
    }
  }
  EXPECT_TRUE(at::allclose(out.out.reshape({-1, c->hidden_size}), ref, 1e-5, 1e-6));
  EXPECT_EQ(out.expert_counts.sum().item<int64_t>(), flat.size(0) * c->num_experts_per_tok);
}

TEST(MoeBlock, BalancedGateRoutesRoundRobin) {
  auto c = ParseModelConfig(kMinimalConfig);
  ASSERT_TRUE(c.ok());
  at::Tensor x = at::randn({6, c->hidden_size});
  Routing r = Route(x, at::randn({c->num_experts, c->hidden_size}), *c, GateMode::kBalanced);
  for (int64_t t = 0; t < 6; ++t) {
    for (int64_t j = 0; j < 2; ++j) EXPECT_EQ(r.experts[t][j].item<int64_t>(), (t * 2 + j) % 5);
  }
  EXPECT_TRUE(at::allclose(r.weights, at::full({6, 2}, 0.5)));
}

TEST(Transformer, ActivationCheckpointingGivesTheSameGradients) {
  auto c = ParseModelConfig(kMinimalConfig);
  ASSERT_TRUE(c.ok());
  at::Tensor ids = at::randint(0, c->vocab_size, {2, 9}, at::kLong);
  std::vector<std::vector<at::Tensor>> grads(2);
  std::vector<double> losses;
  for (int ckpt = 0; ckpt < 2; ++ckpt) {
    ModelOptions o;
    o.activation_checkpointing = ckpt == 1;
    ModelWeights w = InitRandomWeights(*c, o, 11);
    EnableGradients(w);
    auto model = MoeTransformer::Create(*c, o, std::move(w));
    ASSERT_TRUE(model.ok()) << model.status();
    ForwardResult r = (*model)->Forward({ids, ShiftLabels(ids), {}, {}}, false);
    at::Tensor loss = r.loss_sum / r.num_targets;
    loss.backward();
    losses.push_back(loss.item<double>());
    for (auto& p : (*model)->Parameters()) grads[ckpt].push_back(p.tensor->grad().clone());
  }
  EXPECT_DOUBLE_EQ(losses[0], losses[1]);
  ASSERT_EQ(grads[0].size(), grads[1].size());
  for (size_t i = 0; i < grads[0].size(); ++i) EXPECT_TRUE(at::allclose(grads[0][i], grads[1][i], 1e-5, 1e-7)) << i;
}

TEST(Transformer, PackedDocumentsDoNotAttendAcrossBoundaries) {
  auto c = ParseModelConfig(kMinimalConfig);
  ASSERT_TRUE(c.ok());
  ModelOptions o;
  auto model = MoeTransformer::Create(*c, o, InitRandomWeights(*c, o, 2));
  ASSERT_TRUE(model.ok());
  c10::NoGradGuard no_grad;
  at::Tensor a = at::randint(0, c->vocab_size, {1, 5}, at::kLong), b = at::randint(0, c->vocab_size, {1, 4}, at::kLong);
  at::Tensor packed = at::cat({a, b}, 1);
  at::Tensor pos = at::cat({at::arange(5), at::arange(4)}).unsqueeze(0);
  at::Tensor seg = at::cat({at::zeros({5}, at::kLong), at::ones({4}, at::kLong)}).unsqueeze(0);
  at::Tensor lp = (*model)->Forward({packed, {}, pos, seg}, true).logits;
  at::Tensor la = (*model)->Forward({a, {}, {}, {}}, true).logits;
  at::Tensor lb = (*model)->Forward({b, {}, {}, {}}, true).logits;
  EXPECT_TRUE(at::allclose(lp.narrow(1, 0, 5), la, 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(lp.narrow(1, 5, 4), lb, 1e-5, 1e-5));
}

TEST(LrSchedule, CosineWithWarmupAsHf) {
  auto s = LrSchedule::Create("cosine", 1.0, 2, 10);
  ASSERT_TRUE(s.ok());
  EXPECT_DOUBLE_EQ(s->At(0), 0.0);
  EXPECT_DOUBLE_EQ(s->At(1), 0.5);
  EXPECT_DOUBLE_EQ(s->At(2), 1.0);
  EXPECT_NEAR(s->At(6), 0.5, 1e-12);
  EXPECT_NEAR(s->At(10), 0.0, 1e-12);
  EXPECT_FALSE(LrSchedule::Create("exotic", 1.0, 0, 10).ok());
}

TEST(SampleOrder, DeterministicAndResumable) {
  SampleOrder a(10, 42), b(10, 42), other(10, 43);
  DataPosition pa, pb, po;
  auto first = a.Take(25, &pa);
  auto second = other.Take(25, &po);
  EXPECT_NE(first, second);
  // Taking in pieces from a fresh order at a stored position gives the same sequence.
  auto part1 = b.Take(13, &pb);
  SampleOrder c(10, 42);
  DataPosition resumed = pb;
  auto part2 = c.Take(12, &resumed);
  part1.insert(part1.end(), part2.begin(), part2.end());
  EXPECT_EQ(part1, first);
  EXPECT_EQ(pa.epoch, 2);
  EXPECT_EQ(pa.index, 5);
}

TEST(TokenDataset, BadLinesAreNamed) {
  std::string dir = TempDir("data");
  std::string path = dir + "/d.jsonl";
  {
    std::ofstream f(path);
    f << "{\"input_ids\": [1, 2, 3]}\n\n{\"input_ids\": [1, 999]}\n";
  }
  auto r = ReadTokenJsonl(path, 64);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("d.jsonl:3"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("999"), std::string::npos);
}

}  // namespace
}  // namespace ftd::engine
