#include "engine/dist/expert_parallel.h"

#include <chrono>
#include <stdexcept>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include "absl/strings/str_cat.h"
#include "engine/model/core/moe/grouped_experts.h"

namespace ftd::engine {
namespace {

std::vector<int64_t> ToVector(const at::Tensor& t) {
  at::Tensor c = t.to(at::kCPU, at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

int64_t Sum(const std::vector<int64_t>& v) {
  int64_t s = 0;
  for (int64_t x : v) s += x;
  return s;
}

// Rows of `in` [sum(in_splits), C] to the ranks of `ep` (blocks of in_splits), received as
// [sum(out_splits), C]; timed into `dispatch`.
at::Tensor ExchangeRows(Communicator* ep, ExpertParallelDispatch* dispatch, const at::Tensor& in,
                        const std::vector<int64_t>& out_splits, const std::vector<int64_t>& in_splits) {
  std::vector<int64_t> shape = in.sizes().vec();
  shape[0] = Sum(out_splits);
  at::Tensor out = at::empty(shape, in.options());
  auto t0 = std::chrono::steady_clock::now();
  absl::Status status = ep->AllToAll(out, in.contiguous(), out_splits, in_splits);
  if (dispatch != nullptr) {
    dispatch->AddExchangeNanos(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count());
  }
  if (!status.ok()) throw std::runtime_error(std::string(status.message()));
  return out;
}

struct ExchangeContext : public torch::CustomClassHolder {
  Communicator* ep = nullptr;
  ExpertParallelDispatch* dispatch = nullptr;
  std::vector<int64_t> out_splits, in_splits;
  std::vector<int64_t> out_shape;  // for an undefined incoming gradient (treated as zeros)
  at::TensorOptions out_options;
};

// The differentiable all-to-all: backward sends the gradients back along the same routes.
struct AllToAllRows : public torch::autograd::Function<AllToAllRows> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, at::Tensor in,
                                                c10::intrusive_ptr<ExchangeContext> exchange) {
    at::Tensor out = ExchangeRows(exchange->ep, exchange->dispatch, in, exchange->out_splits, exchange->in_splits);
    exchange->out_shape = out.sizes().vec();
    exchange->out_options = out.options();
    ctx->saved_data["exchange"] = c10::IValue::make_capsule(exchange);
    return {out};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto exchange = c10::static_intrusive_pointer_cast<ExchangeContext>(ctx->saved_data["exchange"].toCapsule());
    at::Tensor grad = grad_out[0];
    if (!grad.defined()) grad = at::zeros(exchange->out_shape, exchange->out_options);
    at::Tensor grad_in = ExchangeRows(exchange->ep, exchange->dispatch, grad, exchange->in_splits, exchange->out_splits);
    return {grad_in, at::Tensor()};
  }
};

at::Tensor DifferentiableExchange(Communicator* ep, ExpertParallelDispatch* dispatch, const at::Tensor& in,
                                  const std::vector<int64_t>& out_splits, const std::vector<int64_t>& in_splits) {
  auto exchange = c10::make_intrusive<ExchangeContext>();
  exchange->ep = ep;
  exchange->dispatch = dispatch;
  exchange->out_splits = out_splits;
  exchange->in_splits = in_splits;
  return AllToAllRows::apply(in, exchange)[0];
}

}  // namespace

ExpertParallelDispatch::ExpertParallelDispatch(Communicator* ep, int64_t num_experts)
    : ep_(ep), num_experts_(num_experts), experts_per_rank_(num_experts / ep->size()) {}

DispatchResult ExpertParallelDispatch::Dispatch(const at::Tensor& tokens, const Routing& routing,
                                                const MoeWeights& local) {
  return {Forward(tokens, routing, local), at::bincount(routing.experts.reshape({-1}), {}, num_experts_)};
}

double ExpertParallelDispatch::TakeAllToAllSeconds() { return exchange_nanos_.exchange(0) * 1e-9; }

std::pair<int64_t, int64_t> ExpertParallelDispatch::TakeRowCounts() {
  return {rows_sent_.exchange(0), rows_received_.exchange(0)};
}

at::Tensor ExpertParallelDispatch::Forward(const at::Tensor& tokens, const Routing& routing, const MoeWeights& local) {
  const int64_t T = tokens.size(0), H = tokens.size(1), k = routing.experts.size(1);
  const int64_t P = ep_->size(), El = experts_per_rank_;
  auto long_opts = tokens.options().dtype(at::kLong);

  // Routes: one (destination, token) pair per token and ep rank holding at least one of its
  // experts, ordered by destination then token; the slot metadata says which of the token's k
  // choices each destination serves (local expert id, or -1) and with which weight.
  at::Tensor send_token, local_ids, send_counts;
  {
    c10::NoGradGuard no_grad;
    at::Tensor dest = routing.experts.div(El, "floor");                                  // [T, k]
    at::Tensor visits = at::zeros({T, P}, tokens.options().dtype(at::kBool));
    visits.scatter_(1, dest, true);
    at::Tensor pairs = visits.t().nonzero();                                              // [N, 2]: (d, t)
    send_token = pairs.select(1, 1).contiguous();
    at::Tensor pair_dest = pairs.select(1, 0).unsqueeze(1);                               // [N, 1]
    at::Tensor hit = dest.index_select(0, send_token).eq(pair_dest);                       // [N, k]
    local_ids = at::where(hit, routing.experts.index_select(0, send_token) - pair_dest * El,
                          at::full({}, -1, long_opts));
    send_counts = visits.sum(0);                                                          // [P]
  }
  at::Tensor hit_mask = local_ids.ge(0);
  // Each row carries the token and its k routing weights (zero where another rank serves the
  // choice), so one exchange moves both and the weights get gradients.
  at::Tensor pair_weights = routing.weights.index_select(0, send_token) * hit_mask.to(routing.weights.scalar_type());
  at::Tensor payload = at::cat({tokens.index_select(0, send_token), pair_weights.to(tokens.scalar_type())}, 1);

  // Counts first, so every receiver can size its buffers.
  std::vector<int64_t> send_splits = ToVector(send_counts);
  std::vector<int64_t> ones(P, 1);
  at::Tensor recv_counts = at::empty({P}, long_opts);
  if (absl::Status s = ep_->AllToAll(recv_counts, send_counts.to(long_opts).contiguous(), ones, ones); !s.ok()) {
    throw std::runtime_error(std::string(s.message()));
  }
  std::vector<int64_t> recv_splits = ToVector(recv_counts);
  rows_sent_ += Sum(send_splits);
  rows_received_ += Sum(recv_splits);

  at::Tensor received = DifferentiableExchange(ep_, this, payload, recv_splits, send_splits);   // [R, H+k]
  at::Tensor received_ids = ExchangeRows(ep_, this, local_ids, recv_splits, send_splits);      // [R, k]

  at::Tensor combined;  // [R, H]: each received row's summed expert outputs
  if (received.size(0) == 0) {
    // No rows arrived: nothing to compute, and the local experts get no gradient (the trainer
    // counts an undefined gradient as zeros). The empty `received` stays in the graph, so this
    // rank still runs the backward exchange the other ranks wait in: every rank must run both
    // backward all-to-alls of every layer, whatever its routing.
    combined = received.narrow(1, 0, H);
  } else {
    // Expand each received row to its local experts, grouped by expert.
    at::Tensor row_of, slot_of, expert_counts;
    {
      c10::NoGradGuard no_grad;
      at::Tensor choice = received_ids.ge(0).nonzero();                                   // [M, 2]: (row, slot)
      at::Tensor expert = received_ids.index({choice.select(1, 0), choice.select(1, 1)});
      at::Tensor order = std::get<1>(expert.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
      row_of = choice.select(1, 0).index_select(0, order);
      slot_of = choice.select(1, 1).index_select(0, order);
      expert_counts = at::bincount(expert, {}, El);
    }
    at::Tensor received_rows = received.narrow(1, 0, H);
    at::Tensor received_weights = received.narrow(1, H, k).reshape({-1});
    at::Tensor rows = received_rows.index_select(0, row_of);
    at::Tensor row_weights = received_weights.index_select(0, row_of * k + slot_of);
    at::Tensor expert_out = ExpertsForward(rows, row_weights, expert_counts, local);         // [M, H]
    combined = at::zeros({received.size(0), H}, expert_out.options()).index_add(0, row_of, expert_out);
  }

  at::Tensor returned = DifferentiableExchange(ep_, this, combined, send_splits, recv_splits);  // [N, H]
  return at::zeros({T, H}, returned.options()).index_add(0, send_token, returned);
}

}  // namespace ftd::engine
