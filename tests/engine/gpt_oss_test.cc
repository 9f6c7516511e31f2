// GPT-OSS on the CPU without HF (HF parity is tests/python/test_gpt_oss_parity.py):
// - the presets count as transformers counts GptOssForCausalLM (values from its meta-device model);
// - a packed row (documents with their own positions, sliding windows and attention sinks) gives
//   each document the logits, loss and parameter gradients it has alone;
// - attention with sinks through SDPA (CUDA's path) equals the dense formula, forward and backward;
// - config errors name the field.
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "engine/model/config.h"
#include "engine/model/core/gqa_attention.h"
#include "engine/model/hf_checkpoint.h"
#include "engine/model/transformer.h"
#include "gtest/gtest.h"
#include "tests/engine/packed_row_test_util.h"

namespace ftd::engine {
namespace {

TEST(GptOss, PresetsCountAsTransformers) {
  // sum(p.numel() for p in GptOssForCausalLM(GptOssConfig(num_hidden_layers=L,
  // num_local_experts=E)).parameters()) on the meta device, transformers 5.25.
  ModelConfig small = *PresetConfig("gpt-oss-20b");
  EXPECT_EQ(small.TotalParameters(), 20914757184);
  ModelConfig big = *PresetConfig("gpt-oss-120b");
  EXPECT_EQ(big.TotalParameters(), 116829156672);
  EXPECT_EQ(small.NumMoeLayers(), 24);
  EXPECT_TRUE(small.IsSlidingLayer(0));
  EXPECT_FALSE(small.IsSlidingLayer(1));
  // --layers keeps the alternation.
  ModelConfig three = WithLayers(small, 3);
  EXPECT_EQ(three.layer_types, (std::vector<std::string>{"sliding_attention", "full_attention", "sliding_attention"}));
  ModelConfig more = WithLayers(*PresetConfig("tiny-gpt-oss"), 5);
  EXPECT_TRUE(more.IsSlidingLayer(4));
  EXPECT_FALSE(more.IsSlidingLayer(3));
}

TEST(GptOss, PackedRowEqualsItsDocumentsOneByOne) {
  ModelConfig c = *PresetConfig("tiny-gpt-oss");
  c.sliding_window = 3;  // shorter than both documents
  ModelOptions o;
  ModelWeights init = InitRandomWeights(c, o, 11);
  {
    c10::NoGradGuard no_grad;
    for (LayerWeights& L : init.layers) {
      L.attn.sinks.normal_(0, 1);  // sinks large enough to matter
      L.moe.gate_up_bias.normal_(0, 0.3);
      L.moe.down_bias.normal_(0, 0.3);
    }
  }
  testing::PackedRowRun run = testing::RunPackedRowAndDocuments(c, o, init, 7, 9, 3);
  testing::ExpectPackedRowEqualsDocuments(run);
  int sinks_checked = 0;
  for (NamedParam& p : run.packed_model->Parameters()) {
    if (p.name.find("sinks") != std::string::npos) sinks_checked += p.tensor->grad().abs().sum().item<double>() > 0;
  }
  EXPECT_EQ(sinks_checked, c.num_hidden_layers);  // the sinks take gradients
  // Without the document mask, the second document would see the first: the packed result differs.
  Batch unmasked = run.packed;
  unmasked.segment_ids = at::Tensor();
  c10::NoGradGuard no_grad;
  at::Tensor leaked = run.packed_model->Forward(unmasked, true).logits;
  EXPECT_FALSE(at::allclose(leaked.narrow(1, 7, 9), run.logits_alone[1], 1e-5, 1e-5));
}

// The SDPA form of attention with sinks (CUDA's) equals HF's dense formula (the CPU's, checked
// against transformers by the parity tests), with GQA, causal, packed and sliding-window masks.
TEST(GptOss, SinkAttentionSdpaEqualsTheDenseFormulaForwardAndBackward) {
  at::manual_seed(7);
  const int64_t B = 2, Hq = 8, Hkv = 2, S = 11, D = 16;
  at::Tensor segments = at::cat({at::zeros({B, 4}, at::kLong), at::ones({B, S - 4}, at::kLong)}, 1);
  const at::Tensor masks[] = {at::Tensor(), PackedCausalMask(segments),
                              SlidingWindowCausalMask(S, 3, segments, at::kCPU)};
  for (const at::Tensor& mask : masks) {
    at::Tensor q = at::randn({B, Hq, S, D}).requires_grad_(true), k = at::randn({B, Hkv, S, D}).requires_grad_(true);
    at::Tensor v = at::randn({B, Hkv, S, D}).requires_grad_(true), sinks = (2 * at::randn({Hq})).requires_grad_(true);
    at::Tensor g = at::randn({B, Hq, S, D});
    auto grads = [&](const at::Tensor& out) {
      std::vector<at::Tensor> r;
      (out * g).sum().backward();
      for (at::Tensor* t : {&q, &k, &v, &sinks}) {
        r.push_back(t->grad().clone());
        t->mutable_grad().zero_();
      }
      return r;
    };
    at::Tensor ours = SinkAttentionSdpa(q, k, v, mask, sinks, 0.25);
    std::vector<at::Tensor> ours_grads = grads(ours);
    at::Tensor ref = SinkAttentionDense(q, k, v, mask, sinks, 0.25);
    std::vector<at::Tensor> ref_grads = grads(ref);
    EXPECT_TRUE(at::allclose(ours, ref, 1e-5, 1e-6)) << (ours - ref).abs().max().item<double>();
    for (size_t i = 0; i < ref_grads.size(); ++i) {
      EXPECT_TRUE(at::allclose(ours_grads[i], ref_grads[i], 1e-4, 1e-6)) << i;
    }
    EXPECT_GT(ref_grads[3].abs().sum().item<double>(), 0);  // the sinks take gradients
  }
}

TEST(GptOss, ConfigErrorsNameTheField) {
  const std::string base = R"({"model_type": "gpt_oss", "vocab_size": 32, "hidden_size": 16,
    "intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
    "head_dim": 8, "num_local_experts": 4, "num_experts_per_tok": 2)";
  auto error = [&](const std::string& extra) {
    auto c = ParseModelConfig(base + extra + "}", "x/config.json");
    return c.ok() ? std::string("ok") : std::string(c.status().message());
  };
  EXPECT_EQ(error(""), "ok");
  auto c = *ParseModelConfig(base + "}");
  EXPECT_TRUE(c.attention_sinks && c.router_logit_bias && c.expert_bias && c.attention_bias);
  EXPECT_EQ(c.sliding_window, 128);
  EXPECT_EQ(c.rope.type, "yarn");
  EXPECT_FALSE(c.rope.truncate);
  EXPECT_DOUBLE_EQ(c.swiglu_limit, 7.0);
  EXPECT_TRUE(c.IsSlidingLayer(0) && !c.IsSlidingLayer(1));
  EXPECT_NE(error(R"(, "attention_dropout": 0.1)").find("x/config.json: \"attention_dropout\""), std::string::npos);
  EXPECT_NE(error(R"(, "swiglu_limit": -1)").find("\"swiglu_limit\""), std::string::npos);
  EXPECT_NE(error(R"(, "layer_types": ["full_attention"])").find("\"layer_types\" has 1"), std::string::npos);
  EXPECT_NE(error(R"(, "sliding_window": null)").find("\"sliding_window\" is null"), std::string::npos);
  EXPECT_EQ(error(R"(, "sliding_window": null, "layer_types": ["full_attention", "full_attention"])"), "ok");
  EXPECT_NE(error(R"(, "num_experts_per_tok": 5)").find("num_experts_per_tok"), std::string::npos);
}

}  // namespace
}  // namespace ftd::engine
