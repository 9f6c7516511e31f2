#include "tests/engine/packed_row_test_util.h"

#include <ATen/ATen.h>

#include "engine/model/hf_checkpoint.h"
#include "gtest/gtest.h"

namespace ftd::engine::testing {

namespace {

std::unique_ptr<MoeTransformer> Fresh(const ModelConfig& c, const ModelOptions& o, const ModelWeights& init) {
  ModelWeights w = init;
  for (NamedParam& p : ListParameters(w)) *p.tensor = p.tensor->detach().clone();
  if (w.tied) w.lm_head = w.embed;
  EnableGradients(w);
  return *MoeTransformer::Create(c, o, std::move(w));
}

}  // namespace

PackedRowRun RunPackedRowAndDocuments(const ModelConfig& c, const ModelOptions& o, const ModelWeights& init,
                                      int64_t n1, int64_t n2, uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor ids = at::randint(0, c.vocab_size, {1, n1 + n2}, at::kLong);
  at::Tensor doc1 = ids.narrow(1, 0, n1), doc2 = ids.narrow(1, n1, n2);
  PackedRowRun run;
  run.packed_model = Fresh(c, o, init);
  run.packed.input_ids = ids;
  run.packed.position_ids = at::cat({at::arange(n1, at::kLong), at::arange(n2, at::kLong)}).unsqueeze(0);
  run.packed.segment_ids = at::cat({at::zeros({1, n1}, at::kLong), at::ones({1, n2}, at::kLong)}, 1);
  run.packed.targets = at::cat({ShiftLabels(doc1), ShiftLabels(doc2)}, 1);
  run.packed_result = run.packed_model->Forward(run.packed, /*return_logits=*/true);
  run.packed_result.loss_sum.backward();

  run.alone_model = Fresh(c, o, init);
  run.loss_alone = at::zeros({}, at::kFloat);
  for (const at::Tensor& doc : {doc1, doc2}) {
    Batch b;
    b.input_ids = doc;
    b.targets = ShiftLabels(doc);
    ForwardResult r = run.alone_model->Forward(b, /*return_logits=*/true);
    run.logits_alone.push_back(r.logits);
    run.loss_alone = run.loss_alone + r.loss_sum;
  }
  run.loss_alone.backward();
  return run;
}

void ExpectPackedRowEqualsDocuments(PackedRowRun& run) {
  const at::Tensor& logits = run.packed_result.logits;
  const int64_t n1 = run.logits_alone[0].size(1), n2 = run.logits_alone[1].size(1);
  EXPECT_TRUE(at::allclose(logits.narrow(1, 0, n1), run.logits_alone[0], 1e-5, 1e-5))
      << (logits.narrow(1, 0, n1) - run.logits_alone[0]).abs().max().item<double>();
  EXPECT_TRUE(at::allclose(logits.narrow(1, n1, n2), run.logits_alone[1], 1e-5, 1e-5))
      << (logits.narrow(1, n1, n2) - run.logits_alone[1]).abs().max().item<double>();
  EXPECT_NEAR(run.packed_result.loss_sum.item<double>(), run.loss_alone.item<double>(), 1e-4);
  std::vector<NamedParam> pp = run.packed_model->Parameters(), ap = run.alone_model->Parameters();
  ASSERT_EQ(pp.size(), ap.size());
  for (size_t i = 0; i < pp.size(); ++i) {
    SCOPED_TRACE(pp[i].name);
    const at::Tensor& g1 = pp[i].tensor->grad();
    const at::Tensor& g2 = ap[i].tensor->grad();
    ASSERT_TRUE(g1.defined() && g2.defined());
    EXPECT_TRUE(at::allclose(g1, g2, 1e-4, 1e-5)) << (g1 - g2).abs().max().item<double>();
  }
}

}  // namespace ftd::engine::testing
