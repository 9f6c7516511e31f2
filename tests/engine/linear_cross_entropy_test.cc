// The fused linear cross-entropy (engine/model/linear_cross_entropy.h) against the plain
// logits -> cross_entropy(sum) path: loss, dh and dW, chunked, with ignored targets, and with
// the gradient hint both matching the incoming gradient (no scaling pass in backward) and not.
#include <tuple>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include "engine/model/linear_cross_entropy.h"
#include "gtest/gtest.h"

namespace ftd::engine {
namespace {

struct Case {
  at::Device device;
  at::ScalarType dtype;
};

// Returns (loss, dh, dW) of `scale * loss_sum`.
std::tuple<at::Tensor, at::Tensor, at::Tensor> Run(const at::Tensor& h0, const at::Tensor& w0, const at::Tensor& t,
                                                   bool fused, int64_t chunk, double hint, double scale) {
  at::Tensor h = h0.detach().clone().requires_grad_(true);
  at::Tensor w = w0.detach().clone().requires_grad_(true);
  at::Tensor loss;
  if (fused) {
    loss = LinearCrossEntropySum(h, w, t, chunk, hint);
  } else {
    loss = at::cross_entropy_loss(at::mm(h.to(at::kFloat), w.to(at::kFloat).t()), t, {}, at::Reduction::Sum, -100);
  }
  (loss * scale).backward();
  return {loss.detach(), h.grad().to(at::kFloat), w.grad().to(at::kFloat)};
}

void Check(const Case& c, double hint, double scale) {
  const int64_t N = 37, H = 24, V = 301;  // N not a multiple of the chunk
  at::manual_seed(7);
  at::Tensor h = at::randn({N, H}).to(c.device, c.dtype);
  at::Tensor w = (at::randn({V, H}) * 0.3).to(c.device, c.dtype);
  at::Tensor t = at::randint(0, V, {N}, at::kLong);
  t.index_put_({at::arange(0, N, 5)}, -100);  // some ignored targets
  t = t.to(c.device);
  auto [loss_ref, dh_ref, dw_ref] = Run(h, w, t, false, 0, 1.0, scale);
  auto [loss, dh, dw] = Run(h, w, t, true, 16, hint, scale);
  const bool bf16 = c.dtype == at::kBFloat16;
  // fp32: the fused path scales its gradient by scale / hint afterwards and sums in another order
  // (BLAS's blocking can change with the threads it gets). Elements near zero come out of
  // cancellation, so the absolute slack is relative to the gradient's largest element: a
  // fresh-clone CI run under load saw 5.4e-7 against a largest |dW| of at least 1.7e-3 (3e-4).
  const double rtol = bf16 ? 2e-2 : 1e-4;
  const double atol_h = bf16 ? 2e-2 * scale : 1e-3 * dh_ref.abs().max().item<double>();
  const double atol_w = bf16 ? 2e-2 * scale : 1e-3 * dw_ref.abs().max().item<double>();
  EXPECT_TRUE(at::allclose(loss.to(at::kFloat).cpu(), loss_ref.cpu(), bf16 ? 1e-2 : 1e-5))
      << loss.item<double>() << " vs " << loss_ref.item<double>();
  EXPECT_TRUE(at::allclose(dh.cpu(), dh_ref.cpu(), rtol, atol_h)) << (dh - dh_ref).abs().max().item<double>();
  EXPECT_TRUE(at::allclose(dw.cpu(), dw_ref.cpu(), rtol, atol_w)) << (dw - dw_ref).abs().max().item<double>();
  // Not vacuous: the gradients carry the incoming scale.
  EXPECT_GT(dw.abs().max().item<double>(), 0.05 * scale);
}

// `rows` < N (Batch::loss_rows): the GEMMs run on the rows with a target only (gathered to the
// front), and the result is every row's: the same loss and dW, dh zero on the ignored rows.
void CheckTargetRowsOnly(at::Device device, at::ScalarType dtype) {
  const int64_t N = 53, H = 24, V = 301;
  at::manual_seed(11);
  at::Tensor h = at::randn({N, H}).to(device, dtype);
  at::Tensor w = (at::randn({V, H}) * 0.3).to(device, dtype);
  at::Tensor t = at::randint(0, V, {N}, at::kLong);
  t.narrow(0, 0, 20).fill_(-100);                   // a prompt
  t.index_put_({at::arange(23, N, 7)}, -100);  // and scattered ignored rows (padding, boundaries)
  const int64_t targets = t.ne(-100).sum().item<int64_t>();
  t = t.to(device);
  auto run = [&](int64_t rows) {
    at::Tensor hg = h.detach().clone().requires_grad_(true);
    at::Tensor wg = w.detach().clone().requires_grad_(true);
    at::Tensor loss = LinearCrossEntropySum(hg, wg, t, /*chunk_tokens=*/16, 1.0, false, rows);
    (loss * 0.1).backward();
    return std::make_tuple(loss.detach().to(at::kFloat).cpu(), hg.grad().to(at::kFloat).cpu(), wg.grad().to(at::kFloat).cpu());
  };
  auto [loss_all, dh_all, dw_all] = run(-1);
  const bool bf16 = dtype == at::kBFloat16;
  for (int64_t rows : {targets, targets + 5}) {
    SCOPED_TRACE(testing::Message() << "rows " << rows << " of " << N << ", " << targets << " targets");
    auto [loss, dh, dw] = run(rows);
    EXPECT_TRUE(at::allclose(loss, loss_all, bf16 ? 1e-2 : 1e-6)) << loss.item<double>() << " vs " << loss_all.item<double>();
    EXPECT_TRUE(at::allclose(dh, dh_all, bf16 ? 2e-2 : 1e-5, bf16 ? 2e-3 : 1e-7)) << (dh - dh_all).abs().max().item<double>();
    EXPECT_TRUE(at::allclose(dw, dw_all, bf16 ? 2e-2 : 1e-5, bf16 ? 2e-3 : 1e-7)) << (dw - dw_all).abs().max().item<double>();
    const at::Tensor ignored = t.cpu().eq(-100);
    EXPECT_EQ(dh.index({ignored}).abs().max().item<double>(), 0.0);
    EXPECT_GT(dh.index({ignored.logical_not()}).abs().min().item<double>(), 0.0);  // not vacuous
  }
  // No target at all: no rows, nothing to learn.
  at::Tensor none = at::full({N}, -100, at::kLong).to(device);
  at::Tensor hg = h.detach().clone().requires_grad_(true);
  at::Tensor wg = w.detach().clone().requires_grad_(true);
  at::Tensor loss = LinearCrossEntropySum(hg, wg, none, 16, 1.0, false, /*rows=*/0);
  loss.backward();
  EXPECT_EQ(loss.item<double>(), 0.0);
  EXPECT_EQ(hg.grad().abs().max().item<double>(), 0.0);
  EXPECT_EQ(wg.grad().abs().max().item<double>(), 0.0);
}

TEST(LinearCrossEntropy, CpuTargetRowsOnlyEqualsEveryRow) { CheckTargetRowsOnly(at::kCPU, at::kFloat); }

TEST(LinearCrossEntropy, CudaTargetRowsOnlyEqualsEveryRow) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  CheckTargetRowsOnly(at::Device(at::kCUDA, 0), at::kBFloat16);
}

TEST(LinearCrossEntropy, CpuMatchesPlainPathWithoutHint) { Check({at::kCPU, at::kFloat}, 1.0, 1.0 / 30); }
TEST(LinearCrossEntropy, CpuHintMatchingIncomingGradient) { Check({at::kCPU, at::kFloat}, 1.0 / 30, 1.0 / 30); }
TEST(LinearCrossEntropy, CpuHintDifferentFromIncomingGradient) { Check({at::kCPU, at::kFloat}, 1.0 / 30, 0.25); }

TEST(LinearCrossEntropy, CudaFusedMatchesPlainPath) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (double hint : {1.0, 1.0 / 30}) {
    for (double scale : {1.0 / 30, 0.25}) {
      SCOPED_TRACE(testing::Message() << "hint " << hint << " scale " << scale);
      Check({at::Device(at::kCUDA, 0), at::kBFloat16}, hint, scale);
    }
  }
}

}  // namespace
}  // namespace ftd::engine
