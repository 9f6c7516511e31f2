#include "kernels/permute_rows.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

namespace ftd::kernels {

at::Tensor PermuteRowsReference(const at::Tensor& x, const at::Tensor& order, int64_t k) {
  return x.index_select(0, order.div(k, "floor"));
}

at::Tensor UnpermuteSumReference(const at::Tensor& y, const at::Tensor& inverse, int64_t k) {
  const int64_t T = inverse.numel() / k, H = y.size(1);
  const auto m = at::promote_types(y.scalar_type(), at::kFloat);
  return y.index_select(0, inverse).view({T, k, H}).to(m).sum(1).to(y.scalar_type());
}

namespace {

at::Tensor Permute(const at::Tensor& x, const at::Tensor& order, int64_t k) {
#ifdef FTD_WITH_CUDA
  if (x.is_cuda()) return PermuteRowsCuda(x, order, k);
#endif
  return PermuteRowsReference(x, order, k);
}

at::Tensor Unpermute(const at::Tensor& y, const at::Tensor& inverse, int64_t k) {
#ifdef FTD_WITH_CUDA
  if (y.is_cuda() && y.is_floating_point()) return UnpermuteSumCuda(y, inverse, k);
#endif
  return UnpermuteSumReference(y, inverse, k);
}

struct PermuteRowsFunction : public torch::autograd::Function<PermuteRowsFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& order,
                            const at::Tensor& inverse, int64_t k) {
    ctx->save_for_backward({inverse});
    ctx->saved_data["k"] = k;
    return Permute(x, order, k);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    at::Tensor inverse = ctx->get_saved_variables()[0];
    return {Unpermute(grads[0].contiguous(), inverse, ctx->saved_data["k"].toInt()), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

struct UnpermuteSumFunction : public torch::autograd::Function<UnpermuteSumFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& y, const at::Tensor& order,
                            const at::Tensor& inverse, int64_t k) {
    ctx->save_for_backward({order});
    ctx->saved_data["k"] = k;
    return Unpermute(y, inverse, k);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    at::Tensor order = ctx->get_saved_variables()[0];
    return {Permute(grads[0].contiguous(), order, ctx->saved_data["k"].toInt()), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

void CheckIndices(const char* op, const at::Tensor& rows, const at::Tensor& order, const at::Tensor& inverse,
                  int64_t k) {
  TORCH_CHECK(rows.dim() == 2, op, ": rows must be 2-D, got ", rows.sizes());
  TORCH_CHECK(k >= 1, op, ": k must be >= 1, got ", k);
  TORCH_CHECK(order.dim() == 1 && inverse.dim() == 1 && order.numel() == inverse.numel() && order.numel() % k == 0,
              op, ": order and inverse must be [T*k]");
  TORCH_CHECK(order.scalar_type() == at::kLong && inverse.scalar_type() == at::kLong, op,
              ": order and inverse must be int64");
}

}  // namespace

at::Tensor PermuteRows(const at::Tensor& x, const at::Tensor& order, const at::Tensor& inverse, int64_t k) {
  CheckIndices("PermuteRows", x, order, inverse, k);
  TORCH_CHECK(x.size(0) * k == order.numel(), "PermuteRows: x has ", x.size(0), " rows but order has ",
              order.numel(), " = T*k entries with k = ", k);
  return PermuteRowsFunction::apply(x.contiguous(), order.contiguous(), inverse.contiguous(), k);
}

at::Tensor UnpermuteSum(const at::Tensor& y, const at::Tensor& order, const at::Tensor& inverse, int64_t k) {
  CheckIndices("UnpermuteSum", y, order, inverse, k);
  TORCH_CHECK(y.size(0) == order.numel(), "UnpermuteSum: y has ", y.size(0), " rows, order has ", order.numel());
  return UnpermuteSumFunction::apply(y.contiguous(), order.contiguous(), inverse.contiguous(), k);
}

#ifndef FTD_WITH_CUDA
// CPU-only builds (FTD_CUDA=OFF): the raw launchers exist so that callers and the CUDA tests
// (which skip without a GPU) link; callers check the kernel applies first.
at::Tensor PermuteRowsCuda(const at::Tensor&, const at::Tensor&, int64_t) {
  TORCH_CHECK(false, "PermuteRowsCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
at::Tensor UnpermuteSumCuda(const at::Tensor&, const at::Tensor&, int64_t) {
  TORCH_CHECK(false, "UnpermuteSumCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
#endif

}  // namespace ftd::kernels
