#include "kernels/grouped_gemm.h"

#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "tests/kernels/kernel_test_util.h"

namespace ftd::kernels {
namespace {

// Inclusive prefix sums of `counts` as int32 offs on `device`.
at::Tensor Offs(const std::vector<int64_t>& counts, const at::Device& device) {
  return at::tensor(counts, at::kLong).cumsum(0).to(at::kInt).to(device);
}

// Each row's group as one-hot columns [N, E]: the grouped product written as dense masked GEMMs,
// sum_g onehot[:, g] * (rows @ w[g]), a formula that shares nothing with the references.
at::Tensor OneHot(const std::vector<int64_t>& counts, const at::TensorOptions& o) {
  const int64_t E = static_cast<int64_t>(counts.size());
  at::Tensor group = at::repeat_interleave(at::arange(E, o.dtype(at::kLong)), at::tensor(counts, o.dtype(at::kLong)));
  return group.unsqueeze(1).eq(at::arange(E, o.dtype(at::kLong))).to(o.dtype());
}

at::Tensor MaskedProduct(const at::Tensor& rows, const at::Tensor& w, const at::Tensor& onehot) {
  at::Tensor out = at::zeros({rows.size(0), w.size(2)}, rows.options());
  for (int64_t g = 0; g < w.size(0); ++g) out = out + onehot.select(1, g).unsqueeze(1) * at::mm(rows, w[g]);
  return out;
}

// Groups of every kind: empty (first, middle, last), a single row, one longer than a 256-row tile.
const std::vector<int64_t> kCounts = {0, 5, 1, 0, 300, 17, 64, 0};

TEST(GroupedMm, ReferencesMatchMaskedDenseProductsAndTheirAutograd) {
  at::manual_seed(3);
  const auto o = at::TensorOptions().dtype(at::kDouble);
  int64_t N = 0;
  for (int64_t c : kCounts) N += c;
  const int64_t E = static_cast<int64_t>(kCounts.size()), K = 24, M = 16;
  at::Tensor rows = at::randn({N, K}, o).requires_grad_(true);
  at::Tensor w = at::randn({E, K, M}, o).requires_grad_(true);
  at::Tensor offs = Offs(kCounts, at::kCPU);
  at::Tensor expected = MaskedProduct(rows, w, OneHot(kCounts, o));
  at::Tensor dy = at::randn({N, M}, o);
  expected.backward(dy);

  EXPECT_TRUE(testing::Close(GroupedMm(rows.detach(), w.detach(), offs), expected.detach(), 1e-12, 1e-12));
  // The backward's two products: dRows through the transposed view, dW per group.
  EXPECT_TRUE(testing::Close(GroupedMm(dy, w.detach().transpose(1, 2), offs), rows.grad(), 1e-12, 1e-12));
  at::Tensor dw = GroupedMmWeightGrad(rows.detach(), dy, offs);
  EXPECT_TRUE(testing::Close(dw, w.grad(), 1e-12, 1e-12));
  EXPECT_EQ(dw[0].abs().max().item<double>(), 0.0) << "an empty group's gradient is zero";
}

TEST(GroupedMm, BadOperandsAreNamed) {
  at::Tensor rows = at::randn({6, 8}), w = at::randn({2, 8, 4});
  try {
    GroupedMm(rows, w, Offs({3, 4}, at::kCPU));
    FAIL() << "offs past the rows accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("exceeds the 6 rows"), std::string::npos) << e.what();
  }
  try {
    GroupedMm(rows, at::randn({2, 7, 4}), Offs({3, 3}, at::kCPU));
    FAIL() << "mismatched K accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("rows [N, K], w [E, K, M]"), std::string::npos) << e.what();
  }
}

// Own Hopper kernels (sm90 GPU, CUTLASS build) against the references, every tile and operand
// layout, on uneven groups like a real router's (and a few empty ones), bf16 in, fp32 accumulation.
TEST(GroupedMmCuda, EveryTileMatchesTheReference) {
  const auto bf = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  if (!at::hasCUDA() || !GroupedMmCudaSupports(at::empty({8, 8}, bf), at::empty({1, 8, 8}, bf))) {
    GTEST_SKIP() << "no sm90 GPU or no CUTLASS grouped GEMM in this build";
  }
  at::manual_seed(4);
  const int64_t E = 24, K = 256, M = 136;
  // Router-like loads: multinomial draws over skewed expert probabilities, plus empty groups.
  at::Tensor p = at::rand({E}).pow(3) + 0.01;
  p.index_put_({at::tensor({2, 9, 23}, at::kLong)}, 0.0);
  at::Tensor counts_t = at::bincount(at::multinomial(p, 2000, true), {}, E);
  std::vector<int64_t> counts(counts_t.data_ptr<int64_t>(), counts_t.data_ptr<int64_t>() + E);
  const int64_t N = counts_t.sum().item<int64_t>();
  at::Tensor offs = Offs(counts, at::kCUDA);
  at::Tensor rows = at::randn({N, K}, bf), w = at::randn({E, K, M}, bf) * 0.1, wt = at::randn({E, M, K}, bf) * 0.1;
  at::Tensor dy = at::randn({N, M}, bf);
  at::Tensor y_ref = GroupedMmReference(rows.to(at::kFloat), w.to(at::kFloat), offs);
  at::Tensor yt_ref = GroupedMmReference(rows.to(at::kFloat), wt.to(at::kFloat).transpose(1, 2), offs);
  at::Tensor dw_ref = GroupedMmWeightGradReference(rows.to(at::kFloat), dy.to(at::kFloat), offs);
  const double tol = testing::Tol(at::kBFloat16);
  for (int t = 0; t < kGroupedGemmTileCount; ++t) {
    const auto tile = static_cast<GroupedGemmTile>(t);
    SCOPED_TRACE(GroupedGemmTileName(tile));
    testing::PoisonCudaAllocator();  // an unwritten output element reads as NaN
    EXPECT_TRUE(testing::Close(GroupedMmCuda(rows, w, offs, tile).to(at::kFloat), y_ref, tol, tol * 4));
    testing::PoisonCudaAllocator();
    EXPECT_TRUE(testing::Close(GroupedMmCuda(rows, wt.transpose(1, 2), offs, tile).to(at::kFloat), yt_ref, tol, tol * 4));
    testing::PoisonCudaAllocator();
    at::Tensor dw = GroupedMmWeightGradCuda(rows, dy, offs, tile);
    EXPECT_TRUE(testing::Close(dw.to(at::kFloat), dw_ref, tol, tol * 8));
    EXPECT_EQ(dw[2].abs().max().item<float>(), 0.0f) << "an empty group's weight gradient is zero";
  }
  // And against LibTorch's grouped GEMM on the same operands (the kernel it replaces).
  EXPECT_TRUE(testing::Close(GroupedMm(rows, w, offs).to(at::kFloat), at::_grouped_mm(rows, w, offs).to(at::kFloat),
                             tol, tol * 4));
  EXPECT_TRUE(testing::Close(GroupedMmWeightGrad(rows, dy, offs).to(at::kFloat),
                             at::_grouped_mm(rows.t(), dy, offs).to(at::kFloat), tol, tol * 8));
}

// A range of groups (the device-side offsets of all of them) gives exactly those groups' slice of
// the whole weight gradient: same tiles, same accumulation order, so bit for bit.
TEST(GroupedMmCuda, WeightGradOfAGroupRangeIsTheSliceOfTheWhole) {
  const auto bf = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  if (!at::hasCUDA() || !GroupedMmWeightGradCudaSupports(at::empty({8, 8}, bf), at::empty({8, 8}, bf))) {
    GTEST_SKIP() << "no sm90 GPU or no CUTLASS grouped GEMM in this build";
  }
  at::manual_seed(5);
  const std::vector<int64_t> counts = {0, 37, 300, 0, 5, 129, 0, 64};  // empty first, middle and last-but-one
  int64_t N = 0;
  for (int64_t c : counts) N += c;
  const int64_t E = static_cast<int64_t>(counts.size()), K = 192, M = 256;
  at::Tensor offs = Offs(counts, at::kCUDA);
  at::Tensor a = at::randn({N, K}, bf), b = at::randn({N, M}, bf);
  at::Tensor whole = GroupedMmWeightGradCuda(a, b, offs, GroupedGemmTile::kCooperative128x256);
  for (const auto& [first, count] : std::vector<std::pair<int64_t, int64_t>>{{0, 1}, {0, 3}, {2, 2}, {3, 5}, {7, 1}}) {
    SCOPED_TRACE("groups [" + std::to_string(first) + ", " + std::to_string(first + count) + ")");
    testing::PoisonCudaAllocator();
    at::Tensor part = GroupedMmWeightGradGroupsCuda(a, b, offs, first, count, GroupedGemmTile::kCooperative128x256);
    ASSERT_EQ(part.sizes(), (std::vector<int64_t>{count, K, M}));
    EXPECT_TRUE(part.equal(whole.narrow(0, first, count)));
  }
  try {
    GroupedMmWeightGradGroupsCuda(a, b, offs, 6, 3, GroupedGemmTile::kCooperative128x256);
    FAIL() << "a range past the groups accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("groups [6, 9) outside the 8"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ftd::kernels
