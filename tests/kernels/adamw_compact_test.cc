// kernels/adamw_compact.h: the split fp32 master is exact both ways, the 8-bit moments keep the
// errors the header promises, the reference steps as fp32 AdamW does on its first step and stays
// close after, and (on a GPU) the CUDA kernels equal the reference on random inputs: dense,
// fp32 gradients and weights, a short last block, embedding rows, skipped idle blocks and the
// gradient's sum of squares. compact_sr's stochastic rounding (a bf16 parameter without a low
// half) keeps updates below half an ulp on average, draws its bits from (salt, step, index), and
// rounds on the GPU as the reference does.
#include <cmath>
#include <vector>

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "kernels/adamw.h"
#include "kernels/adamw_compact.h"
#include "kernels/stochastic_round.h"

namespace ftd::kernels {
namespace {

at::Tensor Randn(std::vector<int64_t> shape, uint64_t seed, at::TensorOptions o = {}) {
  at::manual_seed(seed);
  return at::randn(shape, o.dtype(at::kFloat));
}

TEST(CompactMaster, SplitAndJoinAreExact) {
  // Normal values of many magnitudes and signs, ties (low half exactly 0x8000), zeros, tiny.
  at::Tensor x = Randn({4096}, 1) * at::exp2(Randn({4096}, 2) * 8);
  at::Tensor bits = x.view(at::kInt);
  bits.narrow(0, 0, 64).bitwise_and_(~0xFFFF).bitwise_or_(0x8000);  // exact ties
  x.narrow(0, 64, 4).fill_(0.0);
  x.narrow(0, 68, 4).fill_(-0.0);
  x.narrow(0, 72, 4).fill_(1e-40);  // subnormal
  auto [hi, low] = SplitMaster(x);
  ASSERT_EQ(hi.scalar_type(), at::kBFloat16);
  ASSERT_EQ(low.scalar_type(), at::kShort);
  at::Tensor back = MasterFromSplit(hi, low);
  EXPECT_TRUE(back.view(at::kInt).equal(x.view(at::kInt)));  // bit for bit
  // The parameter is a nearest bf16 value (ties away from zero): within half an ulp.
  at::Tensor err = (hi.to(at::kFloat) - x).abs();
  at::Tensor half_ulp = x.abs() * std::ldexp(1.0, -8) + 1e-38;
  EXPECT_TRUE(err.le(half_ulp).all().item<bool>()) << (err / half_ulp).max().item<float>();
}

TEST(CompactMoments, DecodeKeepsTheStatedErrors) {
  const int64_t n = 3 * kCompactBlock + 17;  // a short last block
  at::Tensor m = Randn({n}, 3) * at::exp2(Randn({n}, 4) * 3);
  at::Tensor v = (Randn({n}, 5) * at::exp2(Randn({n}, 6) * 3)).square() + m.square() / 50;
  v.narrow(0, 0, 10).zero_();
  m.narrow(0, 0, 10).zero_();  // never had a gradient
  CompactMoments q = CompactMoments::Zeros(n, at::kCPU);
  EncodeCompactMoments(m, v, q);
  auto [m2, v2] = DecodeCompactMoments(q);
  // sqrt(v) within 2.2% (steps of 2^(1/16)) wherever it is above the code's 16 binades.
  at::Tensor s = v.sqrt(), s2 = v2.sqrt();
  at::Tensor block_max = std::get<0>(
      at::cat({s, at::zeros({4 * kCompactBlock - n})}).view({-1, kCompactBlock}).max(1));
  at::Tensor floor = block_max.repeat_interleave(kCompactBlock).narrow(0, 0, n) * std::exp2(-15.0);
  at::Tensor in_range = s.gt(floor);
  EXPECT_TRUE(((s2 - s).abs() / s.clamp_min(1e-30)).masked_select(in_range).le(0.0222).all().item<bool>());
  EXPECT_TRUE(v2.narrow(0, 0, 10).eq(0).all().item<bool>());
  // m / sqrt(v) within 1/254 of the block's largest |m / sqrt(v)| (plus sqrt(v)'s own error).
  at::Tensor r = m / s2.clamp_min(1e-30), r2 = m2 / s2.clamp_min(1e-30);
  at::Tensor r_max = std::get<0>(at::cat({r.abs(), at::zeros({4 * kCompactBlock - n})}).view({-1, kCompactBlock}).max(1));
  at::Tensor tol = r_max.repeat_interleave(kCompactBlock).narrow(0, 0, n) / 254.0 + 1e-6;
  EXPECT_TRUE(((r2 - r).abs() - tol).masked_select(s2.gt(0)).le(0).all().item<bool>());
}

TEST(CompactAdamW, FirstStepIsFp32AdamWAndLaterStepsStayClose) {
  const int64_t n = 2 * kCompactBlock + 5;
  at::Tensor p = Randn({n}, 7) * 0.02;
  at::Tensor ref_p = p.clone(), ref_m = at::zeros({n}), ref_v = at::zeros({n}), ref_step = at::zeros({});
  CompactMoments mo = CompactMoments::Zeros(n, at::kCPU);
  at::Tensor step = at::zeros({});
  AdamWHyper h{1e-3, 0.9, 0.999, 0.01, 1e-8};
  h.grad_scale = 0.5;
  for (int s = 0; s < 5; ++s) {
    at::Tensor g = Randn({n}, 100 + s);
    step.add_(1.0);
    ref_step.add_(1.0);
    CompactAdamWStepReference(p, at::Tensor(), g, mo, step, h);
    AdamWStepReference(ref_p, g, ref_m, ref_v, ref_step, h);  // fp32 moments
    const double err = (p - ref_p).abs().max().item<double>();
    if (s == 0) {
      EXPECT_LT(err, 1e-8) << "the first update uses this step's exact moments (fp32 rounding apart)";
    } else {
      EXPECT_LT(err, 0.02 * h.lr * (s + 1)) << "step " << s;  // a few % of the updates
    }
  }
}

TEST(CompactAdamW, SplitWeightsKeepUpdatesBelowHalfAnUlp) {
  // bf16 parameters near 1 with updates of 1e-5: round-to-nearest bf16 loses every one of them;
  // the split master keeps them all (as fp32 masters do).
  const int64_t n = kCompactBlock;
  at::Tensor master = at::ones({n});
  auto [p, low] = SplitMaster(master);
  CompactMoments mo = CompactMoments::Zeros(n, at::kCPU);
  at::Tensor step = at::zeros({});
  AdamWHyper h{1e-5, 0.9, 0.999, 0.0, 1e-8};
  for (int s = 0; s < 20; ++s) {
    step.add_(1.0);
    CompactAdamWStepReference(p, low, at::ones({n}).to(at::kBFloat16), mo, step, h);
  }
  at::Tensor w = MasterFromSplit(p, low);
  // Adam's update is lr * sign(g) here: 20 steps move every weight by 2e-4.
  EXPECT_TRUE(at::allclose(w, at::full({n}, 1.0 - 20 * 1e-5), 0, 2e-6)) << w.min().item<float>();
}

TEST(CompactAdamW, StochasticRoundingKeepsUpdatesOnAverage) {
  // bf16 weights of 1 with updates of 1e-5 (Adam's lr * sign(g) here), no low half: round to
  // nearest would leave every weight at 1; stochastic rounding moves ~0.26% of them a step by an
  // ulp (2^-8 below 1), so that the mean follows the exact 1 - 20e-5.
  const int64_t n = 64 * kCompactBlock + 3;
  at::Tensor p = at::ones({n}, at::kBFloat16);
  CompactMoments mo = CompactMoments::Zeros(n, at::kCPU);
  at::Tensor step = at::zeros({});
  AdamWHyper h{1e-5, 0.9, 0.999, 0.0, 1e-8};
  h.round_salt = stochastic_round::SaltOf("w");
  for (int s = 0; s < 20; ++s) {
    step.add_(1.0);
    CompactAdamWStepReference(p, at::Tensor(), at::ones({n}, at::kBFloat16), mo, step, h);
  }
  at::Tensor w = p.to(at::kDouble);
  const double moved = w.ne(1.0).to(at::kDouble).mean().item<double>();
  EXPECT_GT(moved, 0.02);  // ~20 * 0.26%
  EXPECT_LT(moved, 0.08);
  EXPECT_TRUE(w.le(1.0).all().item<bool>() && w.ge(1.0 - 2 * std::ldexp(1.0, -8)).all().item<bool>());
  // The mean's standard error here is ~4e-6 against the 2e-4 it must move.
  EXPECT_NEAR(w.mean().item<double>(), 1.0 - 20 * 1e-5, 2e-5);
}

TEST(CompactAdamW, StochasticRoundingDrawsTheBitsOfItsSaltStepAndIndex) {
  at::Tensor x = Randn({5000}, 12) * 0.03;
  at::Tensor step = at::full({}, 7.0f);
  const at::Tensor whole = StochasticRoundToBf16(x, step, 11, 0);
  ASSERT_EQ(whole.scalar_type(), at::kBFloat16);
  // Rounded down or up: one of the two bf16 neighbours of x (x itself where it is exact).
  const at::Tensor down = x.view(at::kInt).bitwise_and(~0xFFFF).view(at::kFloat);
  const at::Tensor w = whole.to(at::kFloat);
  EXPECT_TRUE(w.abs().ge(down.abs()).all().item<bool>());
  EXPECT_TRUE((w - down).abs().le(down.abs() * std::ldexp(1.0, -7) + 1e-30).all().item<bool>());
  // A slice rounds as the whole does when it is told its offset (a ZeRO shard), not otherwise.
  EXPECT_TRUE(StochasticRoundToBf16(x.narrow(0, 1234, 999), step, 11, 1234).equal(whole.narrow(0, 1234, 999)));
  EXPECT_FALSE(StochasticRoundToBf16(x.narrow(0, 1234, 999), step, 11, 0).equal(whole.narrow(0, 1234, 999)));
  // Another step, another salt: other bits.
  EXPECT_FALSE(StochasticRoundToBf16(x, at::full({}, 8.0f), 11, 0).equal(whole));
  EXPECT_FALSE(StochasticRoundToBf16(x, step, 12, 0).equal(whole));
  // The same inputs: the same bits.
  EXPECT_TRUE(StochasticRoundToBf16(x, step, 11, 0).equal(whole));
}

TEST(CompactAdamW, SumsTheGradientSquares) {
  const int64_t n = 700;
  at::Tensor p = Randn({n}, 9);
  at::Tensor g = Randn({n}, 10);
  CompactMoments mo = CompactMoments::Zeros(n, at::kCPU);
  at::Tensor step = at::ones({});
  AdamWHyper h{1e-3, 0.9, 0.999, 0.0, 1e-8};
  h.scalars = at::tensor({1e-3f, 2.0f});
  h.grad_sq_sum = at::zeros({1});
  CompactAdamWStepReference(p, at::Tensor(), g, mo, step, h);
  EXPECT_NEAR(h.grad_sq_sum.item<double>(), (g * 2).square().sum().item<double>(), 1e-3);
}

// CUDA against the reference, bf16 and fp32 weights and gradients, over several steps.
TEST(CompactAdamWCuda, MatchesTheReference) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto cuda = at::TensorOptions().device(at::kCUDA);
  for (bool split : {true, false}) {
    for (bool bf16_grad : {true, false}) {
      SCOPED_TRACE(::testing::Message() << "split " << split << " bf16 grad " << bf16_grad);
      const int64_t n = 37 * kCompactBlock + 100;  // a short last block
      at::Tensor master = Randn({n}, 11) * 0.05;
      at::Tensor p_ref, low_ref, p_gpu, low_gpu;
      if (split) {
        std::tie(p_ref, low_ref) = SplitMaster(master);
      } else {
        p_ref = master.clone();
      }
      p_gpu = p_ref.to(at::kCUDA);
      low_gpu = split ? low_ref.to(at::kCUDA) : at::Tensor();
      CompactMoments mo_ref = CompactMoments::Zeros(n, at::kCPU), mo_gpu = CompactMoments::Zeros(n, at::kCUDA);
      at::Tensor st_ref = at::zeros({}), st_gpu = at::zeros({}, cuda.dtype(at::kFloat));
      AdamWHyper h{3e-4, 0.9, 0.999, 0.1, 1e-8};
      for (int s = 0; s < 4; ++s) {
        at::Tensor g = Randn({n}, 200 + s) * (s + 1);
        g.narrow(0, 0, 2 * kCompactBlock).zero_();  // blocks that never get a gradient
        if (bf16_grad) g = g.to(at::kBFloat16);
        AdamWHyper hg = h;
        hg.scalars = at::tensor({3e-4f, 0.7f}).to(at::kCUDA);
        hg.grad_sq_sum = at::zeros({1}, cuda.dtype(at::kFloat));
        AdamWHyper hr = h;
        hr.scalars = at::tensor({3e-4f, 0.7f});
        hr.grad_sq_sum = at::zeros({1});
        st_ref.add_(1.0);
        st_gpu.add_(1.0);
        ASSERT_TRUE(CompactAdamWCudaSupports(p_gpu, low_gpu, g.to(at::kCUDA), mo_gpu, st_gpu, hg));
        CompactAdamWStepCuda(p_gpu, low_gpu, g.to(at::kCUDA), mo_gpu, st_gpu, hg);
        CompactAdamWStepReference(p_ref, low_ref, g, mo_ref, st_ref, hr);
        at::Tensor w_gpu = split ? MasterFromSplit(p_gpu.cpu(), low_gpu.cpu()) : p_gpu.cpu();
        at::Tensor w_ref = split ? MasterFromSplit(p_ref, low_ref) : p_ref;
        // A moment code that rounded the other way moves one element's update by ~2%.
        EXPECT_TRUE(at::allclose(w_gpu, w_ref, 1e-6, 0.05 * h.lr)) << "step " << s << " max diff "
                                                             << (w_gpu - w_ref).abs().max().item<double>();
        // Codes: the same but where log2/exp2 round differently at a code boundary.
        const double same_s = mo_gpu.s_codes.cpu().eq(mo_ref.s_codes).to(at::kFloat).mean().item<double>();
        const double close_r =
            (mo_gpu.r_codes.cpu().to(at::kInt) - mo_ref.r_codes.to(at::kInt)).abs().le(1).all().item<bool>();
        EXPECT_GT(same_s, 0.999) << "step " << s;
        EXPECT_TRUE(close_r) << "step " << s;
        EXPECT_TRUE(at::allclose(mo_gpu.s_max.cpu(), mo_ref.s_max, 1e-4, 0));
        EXPECT_NEAR(hg.grad_sq_sum.item<double>(), hr.grad_sq_sum.item<double>(),
                    1e-4 * hr.grad_sq_sum.item<double>());
      }
      // The idle blocks were left as they were.
      EXPECT_TRUE(mo_gpu.s_max.narrow(0, 0, 2).eq(0).all().item<bool>());
    }
  }
}

// compact_sr on the GPU: from the same state, each step rounds as the reference does, bit for bit
// but where the fp32 result lies within a few ulps of a rounding threshold (the kernel's
// approximate sqrt and division) or a moment code rounded the other way; a short last block, even
// and odd base offsets (a ZeRO shard) and embedding rows included.
TEST(CompactAdamWCuda, StochasticRoundingMatchesTheReference) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto cuda = at::TensorOptions().device(at::kCUDA);
  const int64_t n = 41 * kCompactBlock + 77;
  at::Tensor p_ref = (Randn({n}, 13) * 0.05).to(at::kBFloat16);
  CompactMoments mo_ref = CompactMoments::Zeros(n, at::kCPU);
  at::Tensor st_ref = at::zeros({});
  AdamWHyper h{3e-4, 0.9, 0.999, 0.1, 1e-8};
  h.round_salt = stochastic_round::SaltOf("model.layers.0.mlp.experts.gate_up_proj");
  for (int s = 0; s < 4; ++s) {
    h.round_index_base = s % 2 == 0 ? 3 * 4096 : 4097;  // even (a hash a pair) and odd (a hash an element)
    at::Tensor g = (Randn({n}, 300 + s) * (s + 1)).to(at::kBFloat16);
    at::Tensor p_gpu = p_ref.to(at::kCUDA);
    CompactMoments mo_gpu{mo_ref.r_codes.to(at::kCUDA), mo_ref.s_codes.to(at::kCUDA), mo_ref.r_scale.to(at::kCUDA),
                          mo_ref.s_max.to(at::kCUDA)};
    st_ref.add_(1.0);
    at::Tensor st_gpu = st_ref.to(at::kCUDA);
    ASSERT_TRUE(CompactAdamWCudaSupports(p_gpu, at::Tensor(), g.to(at::kCUDA), mo_gpu, st_gpu, h));
    const at::Tensor before = p_ref.clone();
    CompactAdamWStepCuda(p_gpu, at::Tensor(), g.to(at::kCUDA), mo_gpu, st_gpu, h);
    CompactAdamWStepReference(p_ref, at::Tensor(), g, mo_ref, st_ref, h);
    const at::Tensor gpu = p_gpu.cpu();
    const double equal = gpu.eq(p_ref).to(at::kDouble).mean().item<double>();
    const double moved = p_ref.ne(before).to(at::kDouble).mean().item<double>();
    EXPECT_GT(equal, 0.999) << "step " << s;
    EXPECT_GT(moved, 0.5) << "step " << s;  // not vacuous: most weights moved
    const at::Tensor diff = (gpu.to(at::kFloat) - p_ref.to(at::kFloat)).abs();
    EXPECT_TRUE(diff.le(p_ref.to(at::kFloat).abs() * std::ldexp(1.0, -7) + 1e-30).all().item<bool>())
        << "step " << s << ": more than one bf16 ulp apart";
  }
  // Embedding rows without a low half: the rows step equals the dense step bit for bit.
  const int64_t rows = 700, cols = 2 * kCompactBlock;
  at::Tensor p_rows = (Randn({rows, cols}, 14, cuda) * 0.02).to(at::kBFloat16), p_dense = p_rows.clone();
  CompactMoments mo_rows = CompactMoments::Zeros(rows * cols, at::kCUDA);
  CompactMoments mo_dense = CompactMoments::Zeros(rows * cols, at::kCUDA);
  at::Tensor st_rows = at::ones({}, cuda.dtype(at::kFloat)), st_dense = st_rows.clone();
  at::Tensor slot_of = at::full({rows}, -1, cuda.dtype(at::kInt));
  at::manual_seed(40);
  at::Tensor ids = at::randperm(rows, cuda.dtype(at::kLong)).narrow(0, 0, 64);  // distinct rows
  at::Tensor dy = at::randn({64, cols}, cuda.dtype(at::kBFloat16));
  at::Tensor token_rows = EmbeddingTokenRowsCuda(ids, dy, slot_of);
  const at::Tensor dense = at::embedding_dense_backward(dy, ids, rows, -1, false);
  AdamWHyper hr{1e-3, 0.9, 0.999, 0.0, 1e-8};
  hr.round_salt = 5;
  CompactAdamWRowsStepCuda(p_rows, at::Tensor(), mo_rows, st_rows, token_rows, slot_of, hr);
  CompactAdamWStepCuda(p_dense, at::Tensor(), dense, mo_dense, st_dense, hr);
  EXPECT_TRUE(at::equal(p_rows, p_dense));
  EXPECT_GT(p_rows.ne((Randn({rows, cols}, 14, cuda) * 0.02).to(at::kBFloat16)).to(at::kFloat).mean().item<double>(),
            0.05);
}

// The embedding's step from token rows equals the dense step on the dense gradient they sum to.
TEST(CompactAdamWCuda, RowsStepEqualsTheDenseStep) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto cuda = at::TensorOptions().device(at::kCUDA);
  // Enough blocks that each warp of the grid-stride kernel takes several, from different rows.
  const int64_t rows = 5000, cols = 3 * kCompactBlock;
  at::Tensor master = Randn({rows, cols}, 21, cuda) * 0.02;
  auto [p_rows, low_rows] = SplitMaster(master);
  at::Tensor p_dense = p_rows.clone(), low_dense = low_rows.clone();
  CompactMoments mo_rows = CompactMoments::Zeros(rows * cols, at::kCUDA);
  CompactMoments mo_dense = CompactMoments::Zeros(rows * cols, at::kCUDA);
  at::Tensor st_rows = at::zeros({}, cuda.dtype(at::kFloat)), st_dense = st_rows.clone();
  at::Tensor slot_of = at::full({rows}, -1, cuda.dtype(at::kInt));
  AdamWHyper h{1e-3, 0.9, 0.999, 0.0, 1e-8};
  for (int s = 0; s < 3; ++s) {
    at::manual_seed(30 + s);
    at::Tensor ids = at::randint(0, rows / 3, {64}, cuda.dtype(at::kLong));  // repeats; most rows unused
    at::Tensor dy = at::randn({64, cols}, cuda.dtype(at::kBFloat16));
    at::Tensor token_rows = EmbeddingTokenRowsCuda(ids, dy, slot_of);
    // The token rows are the dense gradient's rows (summed in another order by ATen).
    const at::Tensor aten = at::embedding_dense_backward(dy, ids, rows, -1, false);
    const double want = aten.to(at::kFloat).square().sum().item<double>();
    EXPECT_NEAR(token_rows.to(at::kFloat).square().sum().item<double>(), want, 1e-4 * want);
    // The dense step is given exactly those rows (AdamW's first steps are sign-like, so rows
    // summed in another order would move near-zero gradients a whole lr the other way).
    const at::Tensor sorted = std::get<0>(ids.sort(/*stable=*/std::optional<bool>(true), /*dim=*/0, /*descending=*/false));
    const at::Tensor dense = at::zeros({rows, cols}, dy.options()).index_add_(0, sorted, token_rows);
    st_rows.add_(1.0);
    st_dense.add_(1.0);
    CompactAdamWRowsStepCuda(p_rows, low_rows, mo_rows, st_rows, token_rows, slot_of, h);
    CompactAdamWStepCuda(p_dense, low_dense, dense, mo_dense, st_dense, h);
    EXPECT_TRUE(slot_of.eq(-1).all().item<bool>()) << "slot_of is restored";
    at::Tensor w_rows = MasterFromSplit(p_rows, low_rows), w_dense = MasterFromSplit(p_dense, low_dense);
    EXPECT_TRUE(at::equal(w_rows, w_dense)) << (w_rows - w_dense).abs().max().item<double>();
    EXPECT_TRUE(at::equal(mo_rows.s_codes, mo_dense.s_codes));
    EXPECT_TRUE(at::equal(mo_rows.r_codes, mo_dense.r_codes));
  }
}

}  // namespace
}  // namespace ftd::kernels
