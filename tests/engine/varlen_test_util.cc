#include "tests/engine/varlen_test_util.h"

#include <algorithm>
#include <sstream>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include "engine/data/document_source.h"
#include "engine/data/sequence_packer.h"
#include "engine/model/config.h"
#include "engine/model/hf_checkpoint.h"
#include "engine/model/transformer.h"
#include "engine/model/varlen_attention.h"
#include "engine/train/packed_batch.h"
#include "gtest/gtest.h"

namespace ftd::engine::testing {

at::Tensor PerDocumentAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const std::vector<int32_t>& cu, double scale) {
  std::vector<at::Tensor> outs;
  for (size_t s = 0; s + 1 < cu.size(); ++s) {
    const int64_t begin = cu[s], length = cu[s + 1] - cu[s];
    // [L, heads, D] -> [1, heads, L, D]
    auto doc = [&](const at::Tensor& t) { return t.narrow(0, begin, length).transpose(0, 1).unsqueeze(0); };
    at::Tensor o = at::scaled_dot_product_attention(doc(q), doc(k), doc(v), {}, 0.0, /*is_causal=*/true, scale,
                                                    /*enable_gqa=*/true);
    outs.push_back(o.squeeze(0).transpose(0, 1));  // [L, Hq, D]
  }
  return at::cat(outs, 0);
}

double RelativeError(const at::Tensor& actual, const at::Tensor& expected) {
  at::Tensor a = actual.detach().to(at::kCPU, at::kDouble), e = expected.detach().to(at::kCPU, at::kDouble);
  return (a - e).norm().item<double>() / std::max(e.norm().item<double>(), 1e-30);
}

double MaxRelativeError(const at::Tensor& actual, const at::Tensor& expected) {
  at::Tensor a = actual.detach().to(at::kCPU, at::kDouble), e = expected.detach().to(at::kCPU, at::kDouble);
  return (a - e).abs().max().item<double>() / std::max(e.abs().max().item<double>(), 1e-30);
}

at::Tensor SegmentIdsFromRuns(const std::vector<std::vector<int64_t>>& rows) {
  std::vector<at::Tensor> out;
  for (const auto& runs : rows) {
    std::vector<int64_t> ids;
    int64_t next = 0;
    for (int64_t run : runs) {
      const int64_t id = run < 0 ? -1 : next++;
      ids.insert(ids.end(), static_cast<size_t>(std::abs(run)), id);
    }
    out.push_back(at::tensor(ids, at::kLong));
  }
  return at::stack(out);
}

// qwen3_moe (q/k norm), GQA 4/2 with head_dim 16 (the varlen kernel needs a multiple of 8), one
// MoE and one dense layer. A large initializer_range so that attention moves the logits a lot:
// a leak across documents must stand far above fp16/bf16 rounding.
const char* TinyModelConfigJson() {
  return R"({"model_type": "qwen3_moe", "vocab_size": 128, "hidden_size": 64,
  "intermediate_size": 96, "moe_intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "head_dim": 16, "num_local_experts": 5, "num_experts_per_tok": 2,
  "mlp_only_layers": [1], "initializer_range": 0.2,
  "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}})";
}

Batch RandomPackedBatch(const std::vector<std::vector<int64_t>>& rows, int64_t vocab, c10::Device device) {
  at::Tensor segment_ids = SegmentIdsFromRuns(rows);  // [B, S]
  const int64_t B = segment_ids.size(0), S = segment_ids.size(1);
  at::Tensor ids = at::randint(1, vocab, {B, S}, at::kLong);
  at::Tensor positions = at::zeros({B, S}, at::kLong), targets = at::full({B, S}, -100, at::kLong);
  for (int64_t b = 0; b < B; ++b) {
    int64_t begin = 0;
    for (int64_t run : rows[b]) {
      const int64_t length = std::abs(run);
      positions[b].narrow(0, begin, length).copy_(at::arange(length, at::kLong));
      if (run > 1) targets[b].narrow(0, begin, run - 1).copy_(ids[b].narrow(0, begin + 1, run - 1));
      begin += length;
    }
  }
  Batch batch;
  batch.input_ids = ids.to(device);
  batch.targets = targets.to(device);
  batch.position_ids = positions.to(device);
  batch.segment_ids = segment_ids;
  return batch;
}

namespace {

data::TokenizedDocument RandomDocument(int64_t length, int64_t vocab, bool mask_prompt, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Tensor ids = at::randint(1, vocab, {length}, gen, at::kLong);
  data::TokenizedDocument d;
  for (int64_t i = 0; i < length; ++i) d.input_ids.push_back(static_cast<int32_t>(ids[i].item<int64_t>()));
  d.labels = d.input_ids;
  if (mask_prompt) {  // chat-like: no loss on the first three tokens
    for (int i = 0; i < 3; ++i) d.labels[i] = data::kIgnoreLabel;
  }
  return d;
}

Batch SingleDocumentBatch(const data::TokenizedDocument& d, at::Device device) {
  std::vector<int64_t> ids(d.input_ids.begin(), d.input_ids.end()), labels(d.labels.begin(), d.labels.end());
  Batch b;
  b.input_ids = at::tensor(ids, at::kLong).unsqueeze(0).to(device);
  b.targets = ShiftLabels(at::tensor(labels, at::kLong).unsqueeze(0)).to(device);
  return b;
}

}  // namespace

std::string Describe(const PackedVsSeparate& r) {
  std::ostringstream o;
  o << "loss packed " << r.loss_packed << " vs separate " << r.loss_separate << " (targets " << r.targets_packed
    << " vs " << r.targets_separate << "), logits error " << r.logits_error << ", gradient error " << r.grad_error
    << ", leak logits error " << r.leak_logits_error << (r.used_varlen ? ", varlen attention" : ", dense mask");
  return o.str();
}

PackedVsSeparate ComparePackedWithSeparate(c10::Device device, c10::ScalarType dtype, bool varlen_attention) {
  PackedVsSeparate r;
  auto config = ParseModelConfig(TinyModelConfigJson());
  EXPECT_TRUE(config.ok()) << config.status();
  if (!config.ok()) return r;
  ModelOptions options;
  options.device = device;
  options.dtype = dtype;
  options.varlen_attention = varlen_attention;
  auto model = MoeTransformer::Create(*config, options, InitRandomWeights(*config, options, 11));
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return r;
  r.used_varlen = varlen_attention && VarlenAttentionSupports(device, dtype, config->head_dim,
                                                              config->num_attention_heads,
                                                              config->num_key_value_heads);

  // Two rows of 48: 7+5+19+4+11 (2 padding), 30+9 (9 padding).
  const std::vector<int64_t> lengths = {7, 5, 19, 4, 11, 30, 9};
  std::vector<data::TokenizedDocument> docs;
  for (size_t i = 0; i < lengths.size(); ++i) docs.push_back(RandomDocument(lengths[i], 128, i % 2 == 1, 100 + i));
  data::InMemoryDocumentSource source(docs);
  data::PackingOptions packing;
  packing.seq_len = 48;
  packing.shuffle = false;
  auto packer = data::SequencePacker::Create(&source, packing);
  EXPECT_TRUE(packer.ok()) << packer.status();
  if (!packer.ok()) return r;
  std::vector<data::PackedSample> samples;
  struct Place {
    int64_t row, begin, length;
  };
  std::vector<Place> places;  // of each document, in order
  while (true) {
    auto sample = (*packer)->Next();
    EXPECT_TRUE(sample.ok()) << sample.status();
    if (!sample.ok() || !sample->has_value()) break;
    const auto& cu = (*sample)->cu_seqlens;
    for (int32_t d = 0; d < (*sample)->num_documents; ++d) {
      places.push_back({static_cast<int64_t>(samples.size()), cu[d], cu[d + 1] - cu[d]});
    }
    samples.push_back(**sample);
  }
  EXPECT_EQ(samples.size(), 2u);
  EXPECT_EQ(places.size(), docs.size());
  if (samples.size() != 2 || places.size() != docs.size()) return r;
  Batch packed = BatchFromPackedSamples(samples, device);
  packed.segment_ids = packed.segment_ids.to(at::kCPU);  // as the trainer passes them

  auto params = (*model)->Parameters();
  for (auto& p : params) p.tensor->set_requires_grad(true);
  auto zero_grads = [&] {
    for (auto& p : params) p.tensor->mutable_grad() = at::Tensor();
  };
  auto flat_grads = [&] {
    std::vector<at::Tensor> g;
    for (auto& p : params) {
      g.push_back((p.tensor->grad().defined() ? p.tensor->grad() : at::zeros_like(*p.tensor)).reshape({-1}).to(
          at::kCPU, at::kDouble));
    }
    return at::cat(g);
  };
  auto logits_of = [&](const Batch& b) {
    c10::NoGradGuard no_grad;
    return (*model)->Forward(b, /*return_logits=*/true).logits;  // [B, S, V] fp32
  };
  auto logits_error = [&](const at::Tensor& packed_logits, const std::vector<at::Tensor>& alone) {
    double worst = 0;
    for (size_t i = 0; i < places.size(); ++i) {
      at::Tensor slice = packed_logits[places[i].row].narrow(0, places[i].begin, places[i].length);
      worst = std::max(worst, MaxRelativeError(slice, alone[i][0]));
    }
    return worst;
  };

  zero_grads();
  ForwardResult pr = (*model)->Forward(packed, /*return_logits=*/false);
  pr.loss_sum.backward();
  r.loss_packed = pr.loss_sum.item<double>();
  r.targets_packed = pr.num_targets;
  const at::Tensor packed_grads = flat_grads();
  const at::Tensor packed_logits = logits_of(packed);

  zero_grads();
  std::vector<at::Tensor> alone_logits;
  for (const auto& d : docs) {
    Batch single = SingleDocumentBatch(d, device);
    ForwardResult fr = (*model)->Forward(single, /*return_logits=*/false);
    fr.loss_sum.backward();  // gradients accumulate over the documents
    r.loss_separate += fr.loss_sum.item<double>();
    r.targets_separate += fr.num_targets;
    alone_logits.push_back(logits_of(single));
  }
  r.grad_error = RelativeError(packed_grads, flat_grads());
  r.logits_error = logits_error(packed_logits, alone_logits);

  Batch leaky = packed;
  leaky.segment_ids = at::Tensor();
  leaky.position_ids = at::Tensor();
  r.leak_logits_error = logits_error(logits_of(leaky), alone_logits);
  return r;
}

}  // namespace ftd::engine::testing
