#include "engine/model/linear_cross_entropy.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/cross_entropy.h"
#ifdef FTD_WITH_CUDA
#include <c10/cuda/CUDAGraphsC10Utils.h>
#endif

namespace ftd::engine {
namespace {

// Whether `t`'s kernels are being recorded into a CUDA graph (its values cannot be read).
bool GradientIsBeingCaptured(const at::Tensor& t) {
#ifdef FTD_WITH_CUDA
  return t.is_cuda() && c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
#else
  (void)t;
  return false;
#endif
}

// [rows] int64: the indices of the rows with a target (targets != -100) in order, then of the
// ignored rows in order, cut to the first `rows`. Device ops only (no host read), so a CUDA
// graph captures it.
at::Tensor TargetRowsFirst(const at::Tensor& targets, int64_t rows) {
  const int64_t N = targets.size(0);
  const at::Tensor valid = targets.ne(-100);
  const at::Tensor is_target = valid.to(at::kLong);
  const at::Tensor targets_before = is_target.cumsum(0) - is_target;  // [N]
  const at::Tensor index = at::arange(N, targets.options().dtype(at::kLong));
  // Each row's place in the new order: a permutation of 0..N-1.
  const at::Tensor place = at::where(valid, targets_before, is_target.sum() + (index - targets_before));
  return at::empty_like(place).scatter_(0, place, index).narrow(0, 0, rows);
}

struct LinearCrossEntropyFunction : public torch::autograd::Function<LinearCrossEntropyFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& all_h, const at::Tensor& weight,
                            const at::Tensor& all_targets, int64_t chunk, bool need_grad, double expected_grad,
                            bool expected_grad_exact, int64_t rows) {
    // Rows without a target need no logits: with rows < N the GEMMs run on the rows that have
    // one (gathered to the front), and their dh is scattered back over zeros.
    at::Tensor selected;  // undefined: every row
    at::Tensor h = all_h, targets = all_targets;
    if (rows >= 0 && rows < all_h.size(0)) {
      selected = TargetRowsFirst(all_targets, rows);
      h = all_h.index_select(0, selected);              // [rows, H]
      targets = all_targets.index_select(0, selected);  // [rows]
    }
    const int64_t N = h.size(0);
    at::Tensor loss = at::zeros({}, h.options().dtype(at::kFloat));
    at::Tensor dh, dw;
    const bool fused = need_grad && N > 0 && kernels::CrossEntropyRowsCudaSupports(h, targets) &&
                       h.scalar_type() == weight.scalar_type() && h.is_contiguous();
    if (need_grad) {
      dh = at::empty_like(h);
      // Accumulated in the weight's dtype: each chunk's GEMM adds in fp32 and rounds once, so
      // with the default 1024-token chunks a 4096-token step rounds 4 times (no fp32 [V, H] copy).
      // The fused path writes the first chunk's product straight in (no zero fill).
      dw = fused ? at::empty_like(weight) : at::zeros_like(weight);
    }
    for (int64_t start = 0; start < N; start += chunk) {
      const int64_t n = std::min(chunk, N - start);
      at::Tensor hc = h.narrow(0, start, n);
      at::Tensor tc = targets.narrow(0, start, n);
      if (fused) {
        // CUDA: logits [n, V] in the activation dtype (as HF's lm_head), one kernel for the
        // fp32 loss and softmax - onehot written over the logits, then the two gradient GEMMs.
        at::Tensor logits = at::mm(hc, weight.t());
        loss += kernels::CrossEntropyRowsInPlaceCuda(logits, tc, -100).sum();
        // alpha = expected_grad in the GEMM epilogue; beta 0 ignores the uninitialised outputs.
        at::Tensor dh_chunk = dh.narrow(0, start, n);
        at::addmm_out(dh_chunk, dh_chunk, logits, weight, /*beta=*/0, /*alpha=*/expected_grad);
        at::addmm_out(dw, dw, logits.t(), hc, /*beta=*/start == 0 ? 0 : 1, /*alpha=*/expected_grad);
        continue;
      }
      at::Tensor logits = at::mm(hc, weight.t()).to(at::kFloat);  // [n, V]
      at::Tensor valid = tc.ne(-100);
      at::Tensor safe_t = tc.clamp_min(0).unsqueeze(1);
      at::Tensor lse = at::logsumexp(logits, 1, /*keepdim=*/true);  // [n, 1]
      at::Tensor target_logit = logits.gather(1, safe_t);
      loss += ((lse - target_logit).squeeze(1) * valid).sum();
      if (!need_grad) continue;
      // d loss / d logits = softmax - onehot(target), zero for ignored rows; in place.
      at::Tensor grad = logits.sub_(lse).exp_();
      grad.scatter_add_(1, safe_t, at::full_like(target_logit, -1.0));
      grad.mul_(valid.unsqueeze(1).to(grad.scalar_type()) * expected_grad);
      at::Tensor g = grad.to(h.scalar_type());
      dh.narrow(0, start, n).copy_(at::mm(g, weight));
      dw.addmm_(g.t(), hc);
    }
    if (need_grad) {
      if (selected.defined()) dh = at::zeros_like(all_h).index_copy_(0, selected, dh);  // [N, H]
      ctx->saved_data["dh"] = dh;
      ctx->saved_data["dw"] = dw;
      ctx->saved_data["expected_grad"] = expected_grad;
      ctx->saved_data["expected_grad_exact"] = expected_grad_exact;
    }
    return loss;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const double expected = ctx->saved_data["expected_grad"].toDouble();
    at::Tensor dh = ctx->saved_data["dh"].toTensor();
    at::Tensor dw = ctx->saved_data["dw"].toTensor();
    // Drop the context's references: a gradient held only by the engine is stolen by
    // AccumulateGrad; one still referenced here would be copied (622 MB for Qwen3's lm_head).
    ctx->saved_data.erase("dh");
    ctx->saved_data.erase("dw");
    // The gradients were produced scaled by `expected`; they are right as they are when the
    // caller guaranteed that incoming gradient (engine/train/train_step.h: no host read, also
    // inside a CUDA graph capture), or when a host check finds it (one sync at the start of
    // backward, which saves a read and write of the lm_head gradient, 1.2 GB for Qwen3).
    const bool exact = ctx->saved_data["expected_grad_exact"].toBool();
    const bool as_expected = expected != 1.0 && grads[0].numel() == 1 &&
                             (exact || GradientIsBeingCaptured(grads[0]) ||
                              grads[0].item<float>() == static_cast<float>(expected));
    if (!as_expected) {
      // The saved gradients are not needed again: scale them in place.
      at::Tensor factor = expected == 1.0 ? grads[0] : grads[0] / expected;
      dh.mul_(factor.to(dh.scalar_type()));
      dw.mul_(factor.to(dw.scalar_type()));
    }
    return {dh, dw, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor LinearCrossEntropySum(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& targets,
                                 int64_t chunk_tokens, double expected_grad, bool expected_grad_exact,
                                 int64_t rows) {
  const bool need_grad = c10::GradMode::is_enabled() && (h.requires_grad() || weight.requires_grad());
  return LinearCrossEntropyFunction::apply(h, weight, targets, std::max<int64_t>(1, chunk_tokens), need_grad,
                                           expected_grad, expected_grad_exact, rows);
}

}  // namespace ftd::engine
