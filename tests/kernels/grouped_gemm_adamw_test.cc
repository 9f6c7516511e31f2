// The experts' weight gradient taken straight into the compact AdamW step
// (kernels/grouped_gemm_adamw.h): on CPU the reference is the formed gradient's step; on an sm90
// GPU the fused kernel (the update in the GEMM's epilogue) leaves the parameter, its low half and
// its moments bit for bit as GroupedMmWeightGrad followed by CompactAdamWStepCuda does.
#include "kernels/grouped_gemm_adamw.h"

#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "kernels/grouped_gemm.h"

namespace ftd::kernels {
namespace {

at::Tensor Offs(const std::vector<int64_t>& counts, const at::Device& device) {
  return at::tensor(counts, at::kLong).cumsum(0).to(at::kInt).to(device);
}

// A bf16 parameter [E, K, M] with its compact state, after one step from a random gradient (so
// that the moments are not zero), on `device`.
struct State {
  at::Tensor param, low, step;
  CompactMoments moments;
  State Clone() const {
    State s{param.clone(), low.clone(), step.clone(),
            {moments.r_codes.clone(), moments.s_codes.clone(), moments.r_scale.clone(), moments.s_max.clone()}};
    return s;
  }
};

State MakeState(int64_t E, int64_t K, int64_t M, const AdamWHyper& h, const at::Device& device) {
  at::Tensor master = at::randn({E, K, M}) * 0.02;
  auto [param, low] = SplitMaster(master);
  State s{param.to(device), low.to(device), at::zeros({}, at::TensorOptions().device(device)),
          CompactMoments::Zeros(E * K * M, device)};
  s.step.add_(1.0);
  // The first expert's moments stay zero (as an expert no token has reached yet).
  at::Tensor grad = (at::randn({E, K, M}) * 1e-3).to(at::kBFloat16).to(device);
  grad[0].zero_();
  CompactAdamWStep(s.param, s.low, grad, s.moments, s.step, h);
  return s;
}

void ExpectSameState(const State& got, const State& want) {
  EXPECT_TRUE(at::equal(got.param, want.param)) << "bf16 parameter";
  EXPECT_TRUE(at::equal(got.low, want.low)) << "master low half";
  EXPECT_TRUE(at::equal(got.moments.r_codes, want.moments.r_codes)) << "r codes";
  EXPECT_TRUE(at::equal(got.moments.s_codes, want.moments.s_codes)) << "s codes";
  EXPECT_TRUE(at::equal(got.moments.r_scale, want.moments.r_scale)) << "r scales";
  EXPECT_TRUE(at::equal(got.moments.s_max, want.moments.s_max)) << "s maxima";
}

// Groups: empty first and in the middle, one row, more than a 128-row tile, uneven.
const std::vector<int64_t> kCounts = {0, 1, 37, 0, 300, 64};

bool OwnGroupedGemmRuns() {
  if (!at::hasCUDA()) return false;
  const at::Tensor probe = at::empty({8, 8}, at::dtype(at::kBFloat16).device(at::kCUDA));
  return GroupedMmWeightGradCudaSupports(probe, probe);
}

TEST(GroupedMmWeightGradCompactAdamW, EqualsTheStepOfTheFormedGradient) {
  at::manual_seed(5);
  const int64_t E = static_cast<int64_t>(kCounts.size()), K = 24, M = 256;
  int64_t N = 0;
  for (int64_t c : kCounts) N += c;
  AdamWHyper h;
  h.lr = 1e-3;
  State base = MakeState(E, K, M, h, at::kCPU);
  at::Tensor a = at::randn({N, K}).to(at::kBFloat16), b = at::randn({N, M}).to(at::kBFloat16);
  at::Tensor offs = Offs(kCounts, at::kCPU);

  State fused = base.Clone(), formed = base.Clone();
  fused.step.add_(1.0);
  formed.step.add_(1.0);
  GroupedMmWeightGradCompactAdamW(a, b, offs, fused.param, fused.low, fused.moments, fused.step, h);
  CompactAdamWStep(formed.param, formed.low, GroupedMmWeightGradReference(a, b, offs), formed.moments, formed.step, h);
  ExpectSameState(fused, formed);
  EXPECT_FALSE(at::equal(fused.param, base.param)) << "the step changed nothing";
}

TEST(GroupedMmWeightGradCompactAdamW, MismatchedParameterIsNamed) {
  AdamWHyper h;
  State s = MakeState(2, 8, 256, h, at::kCPU);
  at::Tensor a = at::randn({4, 8}).to(at::kBFloat16), b = at::randn({4, 128}).to(at::kBFloat16);
  try {
    GroupedMmWeightGradCompactAdamW(a, b, Offs({1, 3}, at::kCPU), s.param, s.low, s.moments, s.step, h);
    FAIL() << "a [2, 8, 128] gradient for a [2, 8, 256] parameter was accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("the parameter [2, 8, 256]"), std::string::npos) << e.what();
  }
}

TEST(GroupedMmWeightGradCompactAdamWCuda, BitForBitTheUnfusedStep) {
  if (!OwnGroupedGemmRuns()) GTEST_SKIP() << "no sm90 GPU or no CUTLASS grouped GEMM in this build";
  at::manual_seed(7);
  const at::Device cuda(at::kCUDA, 0);
  // K 200: the second 128-row tile of each group is partial; M 512: two tiles across.
  const int64_t E = static_cast<int64_t>(kCounts.size()), K = 200, M = 512;
  int64_t N = 0;
  for (int64_t c : kCounts) N += c;
  for (double decay : {0.0, 0.01}) {
    AdamWHyper h;
    h.lr = 1e-3;
    h.weight_decay = decay;
    h.scalars = at::tensor({2e-3f, 0.5f}, at::TensorOptions().device(cuda));  // lr and a clipping factor
    State base = MakeState(E, K, M, h, cuda);
    at::Tensor a = at::randn({N, K}, at::TensorOptions().device(cuda)).to(at::kBFloat16);
    at::Tensor b = at::randn({N, M}, at::TensorOptions().device(cuda)).to(at::kBFloat16);
    at::Tensor offs = Offs(kCounts, cuda);
    State fused = base.Clone(), formed = base.Clone();
    fused.step.add_(1.0);
    formed.step.add_(1.0);
    at::Tensor fused_sq = at::zeros({1}, at::TensorOptions().device(cuda));
    at::Tensor formed_sq = at::zeros({1}, at::TensorOptions().device(cuda));
    AdamWHyper hf = h, hu = h;
    hf.grad_sq_sum = fused_sq;
    hu.grad_sq_sum = formed_sq;
    ASSERT_TRUE(GroupedMmWeightGradCompactAdamWCudaSupports(a, b, offs, fused.param, fused.low, fused.moments,
                                                            fused.step, hf));
    GroupedMmWeightGradCompactAdamWCuda(a, b, offs, fused.param, fused.low, fused.moments, fused.step, hf);
    const at::Tensor grad = GroupedMmWeightGrad(a, b, offs);
    CompactAdamWStepCuda(formed.param, formed.low, grad, formed.moments, formed.step, hu);
    SCOPED_TRACE(decay);
    ExpectSameState(fused, formed);
    EXPECT_FALSE(at::equal(fused.param, base.param));
    EXPECT_NEAR(fused_sq.item<double>(), formed_sq.item<double>(), 1e-5 * formed_sq.item<double>());
    EXPECT_GT(fused_sq.item<double>(), 0.0);
  }
}

// The squares-only GEMM sums the squares of the bf16 gradient it forms (as the reference does);
// the Grams give the norm of its fp32 accumulation, which differs by the bf16 rounding of dW (on
// an H100 up to 1.5e-4 relative at these sizes; an outer product's few large squares move most).
double Tolerance(WeightGradNormMethod method) { return method == WeightGradNormMethod::kGram ? 5e-4 : 1e-5; }

TEST(PickWeightGradNormMethod, GramsOnlyWhereEachGroupHasManyRows) {
  EXPECT_EQ(PickWeightGradNormMethod(8192, 8, 4096, 28672), WeightGradNormMethod::kGram);         // Mixtral gate_up
  EXPECT_EQ(PickWeightGradNormMethod(8192, 8, 14336, 4096), WeightGradNormMethod::kGram);         // Mixtral down
  EXPECT_EQ(PickWeightGradNormMethod(32768, 128, 2048, 1536), WeightGradNormMethod::kSquaresOnly);  // Qwen3
  EXPECT_EQ(PickWeightGradNormMethod(24576, 64, 2048, 2816), WeightGradNormMethod::kSquaresOnly);   // Moonlight
  EXPECT_EQ(PickWeightGradNormMethod(8192, 8, 256, 256), WeightGradNormMethod::kSquaresOnly);  // FLOPs above half
  EXPECT_EQ(PickWeightGradNormMethod(0, 0, 256, 256), WeightGradNormMethod::kSquaresOnly);
}

TEST(GroupedMmWeightGradSquaredNormCuda, SumsTheSquaresOfTheFormedGradient) {
  if (!OwnGroupedGemmRuns()) GTEST_SKIP() << "no sm90 GPU or no CUTLASS grouped GEMM in this build";
  at::manual_seed(8);
  const at::Device cuda(at::kCUDA, 0);
  int64_t N = 0;
  for (int64_t c : kCounts) N += c;
  // A partial row tile (K 200), and the tiny model's expert shapes (down [E, 128, 256], gate_up
  // [E, 256, 256]) that the step-level tests run.
  for (const auto& [k, m] : std::vector<std::pair<int64_t, int64_t>>{{200, 512}, {128, 256}, {256, 256}}) {
    SCOPED_TRACE(::testing::Message() << "K " << k << ", M " << m);
    at::Tensor a = at::randn({N, k}, at::TensorOptions().device(cuda)).to(at::kBFloat16);
    at::Tensor b = at::randn({N, m}, at::TensorOptions().device(cuda)).to(at::kBFloat16);
    at::Tensor offs = Offs(kCounts, cuda);
    const double want = 2.0 + GroupedMmWeightGrad(a, b, offs).to(at::kFloat).square().sum().item<double>();
    // The squares-only GEMM; the Grams with room for all (the default capacity at this size), for
    // none, and for all but the 300-row group (90,000 floats), which the squares-only GEMM takes.
    const std::vector<std::pair<WeightGradNormMethod, int64_t>> ways = {{WeightGradNormMethod::kSquaresOnly, -1},
                                                                        {WeightGradNormMethod::kGram, -1},
                                                                        {WeightGradNormMethod::kGram, 0},
                                                                        {WeightGradNormMethod::kGram, 60000}};
    for (const auto& [method, capacity] : ways) {
      SCOPED_TRACE(::testing::Message() << "method " << static_cast<int>(method) << ", capacity " << capacity);
      at::Tensor sq = at::full({1}, 2.0f, at::TensorOptions().device(cuda));  // it adds to what is there
      ASSERT_TRUE(GroupedMmWeightGradSquaredNormCudaSupports(a, b, sq));
      GroupedMmWeightGradSquaredNormCuda(a, b, offs, sq, method, capacity);
      EXPECT_NEAR(sq.item<double>(), want, Tolerance(method) * want);
    }
  }
}

// The Grams at an expert layer's size: 64 groups of a real router's uneven loads (one at 4x its
// share, some empty), K 2048 and M 1536 (Qwen3-30B-A3B's gate_up), rows that are not independent
// (a common component, as normalised hidden states have), against the formed gradient's squares.
TEST(GroupedMmWeightGradSquaredNormCuda, GramsAtAnExpertLayersShape) {
  if (!OwnGroupedGemmRuns()) GTEST_SKIP() << "no sm90 GPU or no CUTLASS grouped GEMM in this build";
  at::manual_seed(9);
  const at::Device cuda(at::kCUDA, 0);
  std::vector<int64_t> counts(64);
  for (size_t g = 0; g < counts.size(); ++g) counts[g] = g % 9 == 4 ? 0 : 96 + static_cast<int64_t>(g * 37 % 160);
  counts[7] = 700;
  int64_t N = 0;
  for (int64_t c : counts) N += c;
  const auto opts = at::TensorOptions().device(cuda);
  at::Tensor common = at::randn({1, 2048}, opts) * 3.0;
  at::Tensor a = (at::randn({N, 2048}, opts) + common).to(at::kBFloat16);
  at::Tensor b = (at::randn({N, 1536}, opts) * 1e-3).to(at::kBFloat16);
  at::Tensor offs = Offs(counts, cuda);
  const double want = GroupedMmWeightGrad(a, b, offs).to(at::kDouble).square().sum().item<double>();
  for (const auto method : {WeightGradNormMethod::kGram, WeightGradNormMethod::kSquaresOnly}) {
    SCOPED_TRACE(static_cast<int>(method));
    at::Tensor sq = at::zeros({1}, opts);
    GroupedMmWeightGradSquaredNormCuda(a, b, offs, sq, method);
    EXPECT_NEAR(sq.item<double>(), want, Tolerance(method) * want);
  }
}

}  // namespace
}  // namespace ftd::kernels
