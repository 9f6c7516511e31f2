// Nemotron-H on the CPU without HF (HF parity is tests/python/test_nemotron_h_parity.py):
// - the Nemotron Nano 3 preset counts as transformers counts NemotronHForCausalLM;
// - the SSD chunked scan equals the token-by-token recurrence (chunks that do and do not divide
//   the sequence, B/C groups, packed rows with the state reset at document starts);
// - the causal convolution over packed rows reads nothing of the previous document;
// - a packed row gives each document the logits, loss and parameter gradients it has alone;
// - config errors name the field.
#include <cmath>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "engine/model/config.h"
#include "engine/model/core/mamba2.h"
#include "engine/model/hf_checkpoint.h"
#include "engine/model/transformer.h"
#include "gtest/gtest.h"
#include "tests/engine/packed_row_test_util.h"
#include "kernels/kernels_available.h"

namespace ftd::engine {
namespace {

TEST(NemotronH, PresetsCountAsTransformers) {
  // sum(p.numel() for p in NemotronHForCausalLM(cfg).parameters()) on the meta device,
  // transformers 5.25, with the published Nano 3 config (hybrid_override_pattern cut to L).
  ModelConfig nano = *PresetConfig("nemotron-nano-3-30b-a3b");
  EXPECT_EQ(nano.num_hidden_layers, 52);
  EXPECT_EQ(nano.TotalParameters(), 31577937344);
  EXPECT_EQ(nano.NumMoeLayers(), 23);
  EXPECT_EQ(nano.NumMambaLayers(), 23);
  EXPECT_EQ(nano.NumAttentionLayers(), 6);
  ModelConfig six = WithLayers(nano, 6);
  EXPECT_EQ(six.TotalParameters(), 3439215552);
  // --layers repeats the pattern past its end.
  ModelConfig tiny = *PresetConfig("tiny-nemotron-h");
  ModelConfig more = WithLayers(tiny, 8);
  EXPECT_EQ(more.BlockOf(6), tiny.BlockOf(0));
  EXPECT_EQ(more.BlockOf(7), tiny.BlockOf(1));
  // FLOPs: the causal attention term grows with the sequence for the 6 attention layers only
  // (3 x S x Hq x (d_qk + d_v) each); the Mamba2 scan's term depends on the chunk, not on S.
  EXPECT_NEAR(nano.TrainingFlopsPerToken(8192) - nano.TrainingFlopsPerToken(4096), 6 * 3.0 * 4096 * 32 * 256, 1.0);
  // The scan's term: 23 layers x 3 x 2 x (Q N G / 2 + nh (Q P / 2 + 2 N P)).
  const double ssd = 3.0 * 2.0 * (0.5 * 128 * 128 * 8 + 64 * (0.5 * 128 * 64 + 2.0 * 128 * 64));
  EXPECT_GT(nano.TrainingFlopsPerToken(4096), 23 * ssd);
}

struct ScanInputs {
  at::Tensor x, dt, A, b, c, D;
};

ScanInputs RandomScan(int64_t B, int64_t S, int64_t nh, int64_t P, int64_t G, int64_t N) {
  ScanInputs in;
  in.x = at::randn({B, S, nh, P});
  in.dt = at::softplus(at::randn({B, S, nh}));
  in.A = -at::rand({nh}) * 2 - 0.1;
  in.b = at::randn({B, S, G, N});
  in.c = at::randn({B, S, G, N});
  in.D = at::randn({nh});
  return in;
}

TEST(NemotronH, ChunkedScanEqualsTheRecurrence) {
  at::manual_seed(1);
  const int64_t B = 2, S = 23, nh = 6, P = 4, N = 5;
  for (int64_t G : {1, 3}) {
    ScanInputs in = RandomScan(B, S, nh, P, G, N);
    at::Tensor ref = SsdSequentialReference(in.x, in.dt, in.A, in.b, in.c, in.D, {});
    for (int64_t chunk : {1, 4, 23, 32}) {
      SCOPED_TRACE(::testing::Message() << "groups " << G << " chunk " << chunk);
      at::Tensor y = SsdChunkScan(in.x, in.dt, in.A, in.b, in.c, in.D, chunk, {});
      EXPECT_TRUE(at::allclose(y, ref, 1e-4, 1e-4)) << (y - ref).abs().max().item<double>();
    }
  }
}

TEST(NemotronH, ChunkedScanResetsTheStateAtDocumentStarts) {
  at::manual_seed(2);
  const int64_t S = 29, nh = 4, P = 3, G = 2, N = 4;
  ScanInputs in = RandomScan(2, S, nh, P, G, N);
  // Row 0: documents of 5, 11 (crossing chunk ends) and 13 tokens; row 1: one document.
  at::Tensor seg = at::zeros({2, S}, at::kLong);
  seg[0].narrow(0, 5, 11).fill_(1);
  seg[0].narrow(0, 16, 13).fill_(2);
  at::Tensor ref = SsdSequentialReference(in.x, in.dt, in.A, in.b, in.c, in.D, seg);
  for (int64_t chunk : {4, 8, 16, 64}) {
    SCOPED_TRACE(::testing::Message() << "chunk " << chunk);
    at::Tensor y = SsdChunkScan(in.x, in.dt, in.A, in.b, in.c, in.D, chunk, seg);
    EXPECT_TRUE(at::allclose(y, ref, 1e-4, 1e-4)) << (y - ref).abs().max().item<double>();
    // The third document alone gives the same outputs.
    auto doc = [](const at::Tensor& t) { return t.narrow(0, 0, 1).narrow(1, 16, 13); };
    at::Tensor alone = SsdChunkScan(doc(in.x), doc(in.dt), in.A, doc(in.b), doc(in.c), in.D, chunk, {});
    EXPECT_TRUE(at::allclose(doc(y), alone, 1e-4, 1e-4)) << (doc(y) - alone).abs().max().item<double>();
  }
  // Without the reset, the documents would leak into each other.
  at::Tensor leaked = SsdChunkScan(in.x, in.dt, in.A, in.b, in.c, in.D, 8, {});
  EXPECT_FALSE(at::allclose(leaked[0], ref[0], 1e-4, 1e-4));
}

TEST(NemotronH, CausalConvOverPackedRowsStaysInEachDocument) {
  at::manual_seed(3);
  const int64_t S = 12, C = 5, K = 4;
  at::Tensor x = at::randn({1, S, C}), w = at::randn({C, 1, K}), bias = at::randn({C});
  at::Tensor seg = at::cat({at::zeros({1, 5}, at::kLong), at::ones({1, S - 5}, at::kLong)}, 1);
  at::Tensor packed = CausalDepthwiseConv1d(x, w, bias, seg);
  at::Tensor first = CausalDepthwiseConv1d(x.narrow(1, 0, 5), w, bias, {});
  at::Tensor second = CausalDepthwiseConv1d(x.narrow(1, 5, S - 5), w, bias, {});
  EXPECT_TRUE(at::allclose(packed.narrow(1, 0, 5), first, 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(packed.narrow(1, 5, S - 5), second, 1e-5, 1e-6));
  // One document: the masked form equals conv1d.
  at::Tensor one = CausalDepthwiseConv1d(x, w, bias, at::zeros({1, S}, at::kLong));
  EXPECT_TRUE(at::allclose(one, CausalDepthwiseConv1d(x, w, bias, {}), 1e-5, 1e-6));
}

TEST(NemotronH, PackedRowEqualsItsDocumentsOneByOne) {
  ModelConfig c = *PresetConfig("tiny-nemotron-h");
  ModelOptions o;
  ModelWeights init = InitRandomWeights(c, o, 11);
  {
    c10::NoGradGuard no_grad;
    for (LayerWeights& L : init.layers) {
      if (L.mamba.d.defined()) {
        L.mamba.d.normal_(0, 1);
        L.mamba.dt_bias.normal_(0, 1);
        L.mamba.conv_bias.normal_(0, 0.2);
      }
    }
  }
  // chunk 16: the boundary inside the first chunk, the row over three.
  testing::PackedRowRun run = testing::RunPackedRowAndDocuments(c, o, init, 13, 22, 3);
  testing::ExpectPackedRowEqualsDocuments(run);
  // Without the document ids, the second document would see the first through the Mamba2 state.
  Batch unmasked = run.packed;
  unmasked.segment_ids = at::Tensor();
  c10::NoGradGuard no_grad;
  at::Tensor leaked = run.packed_model->Forward(unmasked, true).logits;
  EXPECT_FALSE(at::allclose(leaked.narrow(1, 13, 22), run.logits_alone[1], 1e-5, 1e-5));
}

// Activation checkpointing recomputes every hybrid layer (Mamba2 included) in backward: the
// same loss and gradients as keeping the activations, on a packed row.
TEST(NemotronH, ActivationCheckpointingGivesTheSameGradients) {
  ModelConfig c = *PresetConfig("tiny-nemotron-h");
  ModelWeights init = InitRandomWeights(c, ModelOptions{}, 7);
  at::manual_seed(4);
  Batch b;
  b.input_ids = at::randint(0, c.vocab_size, {1, 37}, at::kLong);
  b.targets = ShiftLabels(b.input_ids);
  b.segment_ids = at::cat({at::zeros({1, 17}, at::kLong), at::ones({1, 20}, at::kLong)}, 1);
  std::vector<std::vector<at::Tensor>> grads;
  std::vector<double> losses;
  for (bool checkpointing : {false, true}) {
    ModelOptions o;
    o.activation_checkpointing = checkpointing;
    ModelWeights w = init;
    for (NamedParam& p : ListParameters(w)) *p.tensor = p.tensor->detach().clone();
    EnableGradients(w);
    auto model = *MoeTransformer::Create(c, o, std::move(w));
    ForwardResult r = model->Forward(b, /*return_logits=*/false);
    r.loss_sum.backward();
    losses.push_back(r.loss_sum.item<double>());
    std::vector<at::Tensor> g;
    for (NamedParam& p : model->Parameters()) g.push_back(p.tensor->grad().clone());
    grads.push_back(g);
  }
  EXPECT_NEAR(losses[0], losses[1], 1e-6 * std::abs(losses[0]));
  ASSERT_EQ(grads[0].size(), grads[1].size());
  for (size_t i = 0; i < grads[0].size(); ++i) {
    EXPECT_TRUE(at::allclose(grads[0][i], grads[1][i], 1e-5, 1e-6)) << "parameter " << i;
  }
}

// CUDA, bf16: the model with the Mamba2 kernels (conv1d, SSD scan) and the relu^2 expert kernel
// against the same model through HF's chunked ATen form (ModelOptions::mamba_kernels false):
// logits, loss and every gradient, on a packed batch (two rows, three documents) and an unpacked
// one, chunk 16 not dividing the row. The routing is fixed (balanced gate): with the real router,
// bf16 rounding flips near-tied expert choices between any two bf16 runs, which moves the MoE
// layers' gradients by rel 0.11-0.16 (bf16 against fp32 on the CPU's ATen path alone) and would
// hide what the kernels do.
TEST(NemotronH, CudaKernelsMatchTheAtenPath) {
  if (!kernels::CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA kernels in this build or no GPU visible";
  ModelConfig c = *PresetConfig("tiny-nemotron-h");
  ModelOptions o;
  o.device = at::Device(at::kCUDA, 0);
  o.dtype = at::kBFloat16;
  o.gate = GateMode::kBalanced;
  ModelWeights init = InitRandomWeights(c, o, 5);
  at::manual_seed(9);
  const int64_t S = 45;
  at::Tensor ids = at::randint(0, c.vocab_size, {2, S}, at::kLong).to(o.device);
  at::Tensor seg = at::zeros({2, S}, at::kLong);
  seg[0].narrow(0, 20, S - 20).fill_(1);
  for (bool packed : {false, true}) {
    SCOPED_TRACE(packed ? "packed" : "unpacked");
    std::vector<ForwardResult> results;
    std::vector<std::vector<at::Tensor>> grads;
    for (bool kernels_on : {true, false}) {
      ModelOptions oo = o;
      oo.mamba_kernels = kernels_on;
      ModelWeights w = init;
      for (NamedParam& p : ListParameters(w)) *p.tensor = p.tensor->detach().clone();
      EnableGradients(w);
      auto model = *MoeTransformer::Create(c, oo, std::move(w));
      Batch b;
      b.input_ids = ids;
      b.targets = ShiftLabels(ids);
      if (packed) b.segment_ids = seg;
      ForwardResult r = model->Forward(b, /*return_logits=*/true);
      r.loss_sum.backward();
      std::vector<at::Tensor> g;
      for (NamedParam& p : model->Parameters()) {
        g.push_back(p.tensor->grad().defined() ? p.tensor->grad().to(at::kFloat).cpu() : at::Tensor());  // router: none
      }
      results.push_back(r);
      grads.push_back(g);
    }
    at::Tensor a = results[0].logits.cpu(), b = results[1].logits.cpu();
    EXPECT_LT((a - b).abs().max().item<double>(), 0.05);
    EXPECT_NEAR(results[0].loss_sum.item<double>(), results[1].loss_sum.item<double>(),
                2e-3 * std::abs(results[1].loss_sum.item<double>()));
    int compared = 0;
    for (size_t i = 0; i < grads[0].size(); ++i) {
      ASSERT_EQ(grads[0][i].defined(), grads[1][i].defined()) << "parameter " << i;
      if (!grads[1][i].defined()) continue;
      const double rel = ((grads[0][i] - grads[1][i]).norm() / grads[1][i].norm().clamp_min(1e-12)).item<double>();
      EXPECT_LT(rel, 0.05) << "parameter " << i;
      ++compared;
    }
    EXPECT_GT(compared, 35);
  }
}

TEST(NemotronH, ConfigErrorsNameTheField) {
  const std::string base = R"({"model_type": "nemotron_h", "vocab_size": 64, "hidden_size": 32,
      "layers_block_type": ["mamba", "moe"], "mamba_num_heads": 4, "mamba_head_dim": 8, "n_groups": 2,
      "ssm_state_size": 8, "n_routed_experts": 4, "num_experts_per_tok": 2, "num_attention_heads": 4,
      "num_key_value_heads": 2, "head_dim": 8, "moe_intermediate_size": 16,
      "moe_shared_expert_intermediate_size": 8)";
  ASSERT_TRUE(ParseModelConfig(base + "}").ok()) << ParseModelConfig(base + "}").status();
  EXPECT_EQ(ParseModelConfig(base + "}")->num_hidden_layers, 2);
  struct Case {
    std::string extra, named;
  };
  for (const Case& k : std::vector<Case>{{R"(, "n_groups": 3)", "n_groups"},
                                         {R"(, "mlp_hidden_act": "gelu")", "mlp_hidden_act"},
                                         {R"(, "use_bias": true)", "use_bias"},
                                         {R"(, "time_step_limit": [0.0])", "time_step_limit"},
                                         {R"(, "moe_latent_size": -2)", "moe_latent_size"},
                                         {R"(, "num_hidden_layers": 3)", "num_hidden_layers"},
                                         {R"(, "chunk_size": 0)", "chunk_size"}}) {
    auto parsed = ParseModelConfig(base + k.extra + "}", "cfg.json");
    ASSERT_FALSE(parsed.ok()) << k.extra;
    EXPECT_NE(parsed.status().message().find(k.named), std::string::npos) << parsed.status();
    EXPECT_NE(parsed.status().message().find("cfg.json"), std::string::npos) << parsed.status();
  }
  // hybrid_override_pattern and its letters.
  std::string legacy = base;
  legacy.replace(legacy.find(R"("layers_block_type": ["mamba", "moe"])"),
                 std::string(R"("layers_block_type": ["mamba", "moe"])").size(), R"("hybrid_override_pattern": "M*-E")");
  auto parsed = ParseModelConfig(legacy + "}");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->layer_blocks, (std::vector<LayerBlock>{LayerBlock::kMamba, LayerBlock::kAttention,
                                                           LayerBlock::kMlp, LayerBlock::kMoe}));
  legacy.replace(legacy.find("M*-E"), 4, "M*-X");
  parsed = ParseModelConfig(legacy + "}");
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("hybrid_override_pattern"), std::string::npos) << parsed.status();
}

}  // namespace
}  // namespace ftd::engine
