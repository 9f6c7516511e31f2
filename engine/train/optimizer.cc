#include "engine/train/optimizer.h"

#include <cmath>
#include <deque>
#include <map>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "absl/strings/match.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/io/safetensors.h"
#include "engine/model/core/moe/expert_weight_grad_sink.h"
#include "kernels/adamw.h"
#include "kernels/adamw_compact_bulk.h"
#include "kernels/grouped_gemm.h"
#include "kernels/grouped_gemm_adamw.h"
#include "kernels/squared_norm.h"
#include "kernels/stochastic_round.h"
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#ifdef FTD_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGreenContext.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace ftd::engine {

bool DecaysWeight(const std::string& name) {
  return !absl::StrContains(name, "norm") && !absl::EndsWith(name, ".bias");
}

absl::StatusOr<std::unique_ptr<AdamW>> AdamW::Create(std::vector<NamedParam> params, PrecisionPolicy policy,
                                                     const AdamWConfig& config) {
  c10::NoGradGuard no_grad;
  std::unique_ptr<AdamW> opt(new AdamW(policy, config));
  c10::Device device = params.empty() ? c10::Device(at::kCPU) : params[0].tensor->device();
  for (NamedParam& p : params) {
    const at::Tensor& t = *p.tensor;
    if (!t.defined() || !t.requires_grad()) {
      return absl::InvalidArgumentError(absl::StrCat("parameter ", p.name, " does not require gradients"));
    }
    if (t.device() != device) {
      return absl::InvalidArgumentError(absl::StrCat("parameter ", p.name, " is on ", t.device().str(), ", not on ",
                                                     device.str(), " as ", params[0].name));
    }
    Slot s;
    s.param = p;
    s.decay = DecaysWeight(p.name);
    if (UsesCompactMoments(policy)) {
      if (t.scalar_type() == at::kBFloat16) {
        // compact_sr: no low half, the parameter is the weight (rounded stochastically).
        if (policy == PrecisionPolicy::kCompact) {
          s.master_low = at::zeros(t.sizes(), t.options().dtype(at::kShort).requires_grad(false));
        }
      } else if (t.scalar_type() != at::kFloat) {
        return absl::InvalidArgumentError(absl::StrCat("precision ", PrecisionPolicyName(policy),
                                                       " needs bf16 or fp32 parameters; ", p.name, " is ",
                                                       c10::toString(t.scalar_type())));
      }
      s.round_salt = kernels::stochastic_round::SaltOf(p.name.c_str());
      s.moments = kernels::CompactMoments::Zeros(t.numel(), device);
    } else {
      const bool separate_master = policy == PrecisionPolicy::kFp32Master && t.scalar_type() != at::kFloat;
      s.master = separate_master ? t.detach().to(at::kFloat).clone() : t;
      auto moment_opts = s.master.options().requires_grad(false);
      s.exp_avg = at::zeros(s.master.sizes(), moment_opts);
      s.exp_avg_sq = at::zeros(s.master.sizes(), moment_opts);
      if (absl::EndsWith(p.name, "embed_tokens.weight") && s.master.is_cuda() && s.master.dim() == 2) {
        s.touched_rows = at::zeros({s.master.size(0)}, s.master.options().dtype(at::kByte).requires_grad(false));
      }
    }
    s.step = at::zeros({}, t.options().dtype(at::kFloat).requires_grad(false));
    opt->slots_.push_back(std::move(s));
  }
  opt->scalars_ = at::tensor({0.0f, 1.0f}, at::TensorOptions().dtype(at::kFloat)).to(device);
  if (UsesCompactMoments(policy)) {
    opt->update_grad_sq_sum_ = at::zeros({1}, at::TensorOptions().dtype(at::kFloat).device(device));
  }
  return opt;
}

void AdamW::SetStepScalars(double lr, double grad_scale) {
  c10::NoGradGuard no_grad;
  scalars_.select(0, 0).fill_(lr);
  scalars_.select(0, 1).fill_(grad_scale);
}

kernels::AdamWHyper AdamW::Hyper(const Slot& s) const {
  kernels::AdamWHyper hyper{/*lr: step_scalars()*/ 0.0, config_.beta1, config_.beta2, s.decay ? config_.weight_decay : 0.0,
                            config_.eps};
  hyper.short_blocks = side_ != nullptr && step_in_backward_ && config_.side_stream_short_blocks;
  hyper.scalars = scalars_;
  hyper.grad_sq_sum = update_grad_sq_sum_;
  hyper.round_salt = s.round_salt;
  hyper.round_index_base = s.round_offset;
  return hyper;
}

absl::Status AdamW::SetRoundingOffset(const at::Tensor& param, int64_t offset) {
  for (Slot& s : slots_) {
    if (!s.param.tensor->is_same(param)) continue;
    s.round_offset = offset;
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError("SetRoundingOffset: not a parameter of this optimizer");
}

bool AdamW::KernelStep(Slot& s, const at::Tensor& g) {
  if (!kernels::AdamWCudaSupports(s.master, g, s.exp_avg, s.exp_avg_sq, s.step) ||
      !kernels::StepScalarsValid(scalars_, s.master.device())) {
    return false;
  }
  // One vectorised pass (kernels/adamw.h): the same arithmetic as ATen's fused AdamW at ~2.7 TB/s
  // instead of ~1.7 on bf16.
  const kernels::AdamWHyper hyper = Hyper(s);
  if (kernels::AdamWRowSparseSupports(s.master, g, s.exp_avg, s.exp_avg_sq, s.step, s.touched_rows, hyper)) {
    // An embedding table: rows no token has reached yet are skipped, bit-identically.
    kernels::AdamWRowSparseStepCuda(s.master, g, s.exp_avg, s.exp_avg_sq, s.step, s.touched_rows, hyper);
  } else {
    kernels::AdamWStepCuda(s.master, g, s.exp_avg, s.exp_avg_sq, s.step, hyper);
    if (s.touched_rows.defined()) s.touched_rows.fill_(1);
  }
  return true;
}

bool AdamW::BulkStep(Slot& s, const at::Tensor& param, const at::Tensor& grad) {
  if (!side_ || !step_in_backward_ || config_.side_stream_bulk_sms <= 0) return false;
  const int64_t n = param.numel(), whole = n / kernels::kCompactBulkChunk * kernels::kCompactBulkChunk;
  if (whole == 0 || !grad.is_contiguous() || !s.master_low.defined()) return false;  // bf16 parameters only
  const kernels::AdamWHyper hyper = Hyper(s);
  auto head = [&](const at::Tensor& t) { return t.reshape({-1}).narrow(0, 0, whole); };
  const at::Tensor p = head(param), low = head(s.master_low), g = head(grad);
  const kernels::CompactMoments moments = s.moments.Narrow(0, whole);
  if (!kernels::CompactAdamWBulkSupports(p, low, g, moments, s.step, hyper)) return false;
  kernels::CompactAdamWStepBulkCuda(p, low, g, moments, s.step, hyper, config_.side_stream_bulk_sms);
  if (whole < n) {  // the rest by the element-wise kernel
    auto tail = [&](const at::Tensor& t) { return t.reshape({-1}).narrow(0, whole, n - whole); };
    kernels::CompactAdamWStep(tail(param), tail(s.master_low), tail(grad), s.moments.Narrow(whole, n - whole), s.step,
                              hyper);
  }
  return true;
}

void AdamW::UpdateSlot(Slot& s, const at::Tensor& grad) {
  at::Tensor param = s.param.tensor->detach();
  s.step.add_(1.0);
  if (UsesCompactMoments(policy_)) {
    if (BulkStep(s, param, grad)) return;
    kernels::CompactAdamWStep(param, s.master_low, grad.contiguous(), s.moments, s.step, Hyper(s));
    return;
  }
  at::Tensor g = grad.scalar_type() == s.master.scalar_type() ? grad : grad.to(s.master.scalar_type());
  if (!KernelStep(s, g)) {
    // ATen's fused AdamW (CPU, or tensors the kernel does not serve), with the step's values.
    g = g * scalars_.select(0, 1).to(g.scalar_type());
    at::_fused_adamw_({s.master}, {g}, {s.exp_avg}, {s.exp_avg_sq}, {}, {s.step}, scalars_.select(0, 0),
                      config_.beta1, config_.beta2, s.decay ? config_.weight_decay : 0.0, config_.eps,
                      /*amsgrad=*/false, /*maximize=*/false, std::nullopt, std::nullopt);
    if (s.touched_rows.defined()) s.touched_rows.fill_(1);
  }
  if (!s.master.is_same(*s.param.tensor)) param.copy_(s.master);
}

void AdamW::UpdateFromDeferredOperands(Slot& s) {
  const at::Tensor param = s.param.tensor->detach();
  if (config_.deferred_update_in_epilogue) {
    s.step.add_(1.0);
    kernels::GroupedMmWeightGradCompactAdamW(s.deferred_a, s.deferred_b, s.deferred_offs, param, s.master_low,
                                             s.moments, s.step, Hyper(s));
    return;
  }
  // dW [E, K, M] as the backward would have formed it, whole experts at a time (all of them in one
  // chunk unless deferred_update_chunk_bytes asks otherwise; a chunk must start on a block of the
  // compact moments); each chunk is stepped and freed before the next.
  const int64_t experts = s.deferred_offs.numel();
  const int64_t per_expert = experts > 0 ? param.numel() / experts : 0;
  const int64_t chunk_bytes = config_.deferred_update_chunk_bytes;
  const int64_t chunk = chunk_bytes <= 0 || per_expert == 0 || per_expert % kernels::kCompactBlock != 0
                            ? experts
                            : std::max<int64_t>(1, chunk_bytes / (per_expert * param.element_size()));
  s.step.add_(1.0);
  const at::Tensor flat = param.view({-1}), low = s.master_low.view({-1});
  for (int64_t first = 0; first < experts; first += chunk) {
    const int64_t count = std::min(chunk, experts - first), begin = first * per_expert, n = count * per_expert;
    const at::Tensor grad = kernels::GroupedMmWeightGradGroups(s.deferred_a, s.deferred_b, s.deferred_offs, first, count);
    kernels::CompactAdamWStep(flat.narrow(0, begin, n), low.narrow(0, begin, n), grad.view({-1}),
                              s.moments.Narrow(begin, n), s.step, Hyper(s));
  }
}

void AdamW::Step() {
  c10::NoGradGuard no_grad;
  ++steps_;
  for (Slot& s : slots_) {
    if (!s.held_lookups.empty() || s.held_rows.defined()) {
      SumHeldRows(s);
      s.step.add_(1.0);
      kernels::CompactAdamWRowsStepCuda(s.param.tensor->detach(), s.master_low, s.moments, s.step, s.held_rows,
                                        s.slot_of, Hyper(s));
      s.held_rows = at::Tensor();
      continue;
    }
    if (s.deferred_a.defined()) {  // DeferExpertWeightGrad: dW formed again, now with the clip factor known
      UpdateFromDeferredOperands(s);
      s.deferred_a = s.deferred_b = s.deferred_offs = s.deferred_sq = at::Tensor();
      continue;
    }
    const at::Tensor g = s.param.tensor->grad();
    if (g.defined()) UpdateSlot(s, g);
  }
}

void AdamW::SumHeldRows(Slot& s) {
  if (s.held_lookups.empty()) return;
  std::vector<at::Tensor> ids, dys;
  for (auto& [i, d] : s.held_lookups) {
    ids.push_back(i);
    dys.push_back(d);
  }
  s.held_lookups.clear();
  at::Tensor all_ids = ids.size() == 1 ? ids[0] : at::cat(ids);
  at::Tensor all_dy = dys.size() == 1 ? dys[0] : at::cat(dys);
  TORCH_CHECK(!s.held_rows.defined(), "AdamW: an embedding lookup's backward ran after the step's gradient norm "
              "was taken (SquaredGradNorm must follow the step's last backward)");
  s.held_rows = kernels::EmbeddingTokenRowsCuda(all_ids, all_dy.contiguous(), s.slot_of);
}

at::Tensor AdamW::SquaredGradNorm() {
  c10::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (Slot& s : slots_) {
    if (!s.held_lookups.empty()) SumHeldRows(s);
    if (s.held_rows.defined()) grads.push_back(s.held_rows);
    const at::Tensor g = s.param.tensor->grad();
    if (g.defined() && !s.norm_taken) grads.push_back(g);  // those the backward did not take
  }
  at::Tensor total = norm_in_backward_ ? norm_sum_.clone() : at::zeros({}, scalars_.options());
  for (const Slot& s : slots_) {
    if (s.deferred_sq.defined()) total = total + s.deferred_sq.reshape({});
  }
  // total is a fresh tensor here (a clone or a sum), so the squares are added to it in place.
  for (const at::Tensor& g : grads) kernels::AddSquaredNorm(g, total);
  return total;
}

struct AdamW::SideStream {
#ifdef FTD_WITH_CUDA
  SideStream(c10::DeviceIndex device, int sms)
      : green(sms > 0 ? at::cuda::GreenContext::create(static_cast<uint32_t>(sms), device) : nullptr),
        // Low priority: the compute stream (ComputeStreamScope) is served first when both wait for SMs.
        stream(green ? green->Stream() : c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device)) {}
  std::unique_ptr<at::cuda::GreenContext> green;  // the SM partition of the updates, or null
  c10::cuda::CUDAStream stream;
  // While a CUDA graph is captured: gradients whose side-stream update is queued, with the event
  // that marks it done (see StepSlot), and their bytes.
  struct Pending {
    at::Tensor grad;
    at::cuda::CUDAEvent done;
  };
  std::deque<Pending> pending;
  int64_t pending_bytes = 0;
  // Releases pending gradients, oldest first, until at most `keep_bytes` remain: the compute
  // stream waits for each one's update first, so its memory is reused only after the update read it.
  void ReleasePending(c10::cuda::CUDAStream compute, int64_t keep_bytes) {
    while (!pending.empty() && pending_bytes > keep_bytes) {
      pending.front().done.block(compute);
      pending_bytes -= pending.front().grad.nbytes();
      pending.pop_front();
    }
  }
#endif
};

class StepInBackwardHook : public torch::autograd::PostAccumulateGradHook {
 public:
  StepInBackwardHook(AdamW* opt, size_t slot) : opt_(opt), slot_(slot) {}
  void operator()(const torch::autograd::Variable&) override { opt_->StepSlot(opt_->slots_[slot_]); }

 private:
  AdamW* opt_;
  size_t slot_;
};

void AdamW::StepSlot(Slot& s) {
  c10::NoGradGuard no_grad;
  at::Tensor& param = *s.param.tensor;
  at::Tensor grad = param.grad();
  if (!grad.defined()) return;
#ifdef FTD_WITH_CUDA
  if (side_ && param.is_cuda()) {
    // The side stream waits for the gradient, then updates while backward continues.
    c10::cuda::CUDAStream compute = c10::cuda::getCurrentCUDAStream(param.device().index());
    at::cuda::CUDAEvent ready;
    ready.record(compute);
    ready.block(side_->stream);
    {
      c10::cuda::CUDAStreamGuard guard(side_->stream);
      UpdateSlot(s, grad);
    }
    param.mutable_grad() = at::Tensor();
    if (c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None) {
      grad.record_stream(side_->stream);  // its memory is reused only after the update ran
      return;
    }
    // Inside a CUDA graph capture the caching allocator cannot query events, so a block freed
    // with record_stream stays unusable until the capture ends: every gradient of the step would
    // stay allocated. Hold the gradient instead; the compute stream waits for its update before
    // releasing it, oldest first, once more than capture_pending_grad_bytes are held (an old
    // update has usually finished, so the wait rarely stalls the compute stream).
    at::cuda::CUDAEvent done;
    done.record(side_->stream);
    side_->pending_bytes += grad.nbytes();
    side_->pending.push_back({std::move(grad), std::move(done)});
    side_->ReleasePending(compute, config_.capture_pending_grad_bytes);
    return;
  }
#endif
  UpdateSlot(s, grad);
  param.mutable_grad() = at::Tensor();
}

// The optimizer as the experts' weight-gradient sink: it steps the weight inside backward, or
// takes the clipped step's norm in backward and the update after it.
class AdamW::ExpertSink : public ExpertWeightGradSink {
 public:
  explicit ExpertSink(AdamW* opt) : opt_(opt) {}
  bool Consume(const at::Tensor& weight, const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs) override {
    return opt_->in_backward_step_ ? opt_->StepFromExpertWeightGrad(weight, a, b, offs)
                                   : opt_->DeferExpertWeightGrad(weight, a, b, offs);
  }

 private:
  AdamW* opt_;
};

AdamW::AdamW(PrecisionPolicy policy, const AdamWConfig& config) : policy_(policy), config_(config) {}

AdamW::~AdamW() {
  if (expert_sink_ && CurrentExpertWeightGradSink() == expert_sink_.get()) SetExpertWeightGradSink(nullptr);
}

void AdamW::EnableStepInBackward() {
  if (step_in_backward_) return;
  step_in_backward_ = true;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const at::Tensor& t = *slots_[i].param.tensor;
#ifdef FTD_WITH_CUDA
    if (t.is_cuda() && !side_) side_ = std::make_shared<SideStream>(t.device().index(), config_.side_stream_sms);
#endif
    torch::autograd::impl::set_post_acc_grad_hooks(t, std::make_unique<StepInBackwardHook>(this, i));
  }
  InstallExpertSlots();
}

void AdamW::InstallExpertSlots() {
  if (policy_ != PrecisionPolicy::kCompact || !config_.fuse_expert_update) return;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const at::Tensor& t = *slots_[i].param.tensor;
    if (t.dim() == 3) expert_slots_[t.unsafeGetTensorImpl()] = i;
  }
  if (!expert_slots_.empty()) expert_sink_ = std::make_unique<ExpertSink>(this);
}

AdamW::Slot* AdamW::ExpertSlotFree(const at::Tensor& weight) {
  const auto it = expert_slots_.find(weight.unsafeGetTensorImpl());
  if (it == expert_slots_.end()) return nullptr;
  Slot& s = slots_[it->second];
  return s.param.tensor->grad().defined() || s.deferred_a.defined() ? nullptr : &s;
}

bool AdamW::FusedUpdateServes(const Slot& s, const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs) const {
  // On a GPU only the fused kernel is worth it (the unfused update runs on the side stream);
  // elsewhere the reference is the same arithmetic as the hook's step.
  const at::Tensor param = s.param.tensor->detach();
  return !param.is_cuda() || kernels::GroupedMmWeightGradCompactAdamWCudaSupports(a, b, offs, param, s.master_low,
                                                                                   s.moments, s.step, Hyper(s));
}

bool AdamW::DeferExpertWeightGrad(const at::Tensor& weight, const at::Tensor& a, const at::Tensor& b,
                                  const at::Tensor& offs) {
  if (!expert_sink_ || !norm_active_) return false;
  Slot* slot = ExpertSlotFree(weight);
  if (slot == nullptr) return false;
  Slot& s = *slot;
  const at::Tensor param = s.param.tensor->detach();
  c10::NoGradGuard no_grad;
  at::Tensor sq = at::zeros({1}, param.options().dtype(at::kFloat));
  if (!FusedUpdateServes(s, a, b, offs) ||
      (param.is_cuda() && !kernels::GroupedMmWeightGradSquaredNormCudaSupports(a, b, sq))) {
    return false;
  }
  kernels::GroupedMmWeightGradSquaredNorm(a, b, offs, sq);
  s.deferred_a = a;
  s.deferred_b = b;
  s.deferred_offs = offs;
  s.deferred_sq = sq;
  s.norm_taken = true;
  ++fused_expert_steps_;
  return true;
}

bool AdamW::StepFromExpertWeightGrad(const at::Tensor& weight, const at::Tensor& a, const at::Tensor& b,
                                     const at::Tensor& offs) {
  if (!expert_sink_ || !in_backward_step_) return false;
  Slot* slot = ExpertSlotFree(weight);
  if (slot == nullptr) return false;
  Slot& s = *slot;
  if (!FusedUpdateServes(s, a, b, offs)) return false;
  c10::NoGradGuard no_grad;
  s.step.add_(1.0);
  kernels::GroupedMmWeightGradCompactAdamW(a, b, offs, s.param.tensor->detach(), s.master_low, s.moments, s.step,
                                           Hyper(s));
  ++fused_expert_steps_;
  return true;
}

void AdamW::BeginStepInBackward() {
  ++steps_;
  fused_expert_steps_ = 0;
  in_backward_step_ = true;
  if (expert_sink_) SetExpertWeightGradSink(expert_sink_.get());
  if (side_ && config_.backward_sm_carveout > 0) {
    saved_carveout_ = at::globalContext()._SMCarveout_EXPERIMENTAL();
    at::globalContext()._setSMCarveout_EXPERIMENTAL(config_.backward_sm_carveout);
  }
}

void AdamW::FinishStepInBackward() {
  in_backward_step_ = false;
  if (expert_sink_ && CurrentExpertWeightGradSink() == expert_sink_.get()) SetExpertWeightGradSink(nullptr);
  if (side_ && config_.backward_sm_carveout > 0) {
    at::globalContext()._setSMCarveout_EXPERIMENTAL(saved_carveout_);  // forward GEMMs take every SM
  }
#ifdef FTD_WITH_CUDA
  if (side_) {
    // The next forward reads the updated parameters: the compute stream waits for the updates.
    at::cuda::CUDAEvent done;
    done.record(side_->stream);
    c10::cuda::CUDAStream compute = c10::cuda::getCurrentCUDAStream(side_->stream.device_index());
    done.block(compute);
    side_->ReleasePending(compute, 0);  // every update is ordered before the compute stream now
  }
#endif
}

// The lookup whose backward hands the table's gradient to the optimizer as token rows
// (AdamW::EmbeddingLookup). It returns no gradient for the table: nothing reaches
// AccumulateGrad or the step hook.
struct EmbeddingLookupFunction : public torch::autograd::Function<EmbeddingLookupFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& table, const at::Tensor& ids,
                            AdamW* opt, int64_t slot) {
    ctx->save_for_backward({ids});
    ctx->saved_data["opt"] = reinterpret_cast<int64_t>(opt);
    ctx->saved_data["slot"] = slot;
    return at::embedding(table, ids);  // [.., H]
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* opt = reinterpret_cast<AdamW*>(ctx->saved_data["opt"].toInt());
    const at::Tensor ids = ctx->get_saved_variables()[0];
    const at::Tensor& dy = grads[0];
    if (dy.defined()) {
      opt->LookupBackward(static_cast<size_t>(ctx->saved_data["slot"].toInt()), ids.reshape({-1}).contiguous(),
                          dy.reshape({-1, dy.size(-1)}).contiguous());
    }
    return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

bool AdamW::LookupServes(const Slot& s, const at::Tensor& ids) const {
  if (!s.param.tensor->is_cuda() || ids.device() != s.param.tensor->device() || ids.scalar_type() != at::kLong) {
    return false;
  }
  const kernels::AdamWHyper hyper = Hyper(s);
  if (UsesCompactMoments(policy_)) {
    return kernels::CompactAdamWRowsSupports(*s.param.tensor, s.master_low, s.moments, s.step, hyper);
  }
  // The fused update of kernels/adamw.h serves the in-backward step only.
  return step_in_backward_ && s.master.is_same(*s.param.tensor) && s.touched_rows.defined() &&
         kernels::AdamWEmbeddingSupports(s.master, s.exp_avg, s.exp_avg_sq, s.step, s.touched_rows,
                                         ids.reshape({-1}), hyper);
}

at::Tensor AdamW::EmbeddingLookup(const at::Tensor& table, const at::Tensor& ids) {
  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slots_[i];
    if (!s.param.tensor->is_same(table)) continue;
    if (!c10::GradMode::is_enabled() || !LookupServes(s, ids)) break;
    if (!s.slot_of.defined()) s.slot_of = at::full({table.size(0)}, -1, table.options().dtype(at::kInt));
    return EmbeddingLookupFunction::apply(table, ids, this, static_cast<int64_t>(i));
  }
  return at::embedding(table, ids);
}

void AdamW::LookupBackward(size_t index, const at::Tensor& ids, const at::Tensor& dy) {
  c10::NoGradGuard no_grad;
  Slot& s = slots_[index];
  if (!step_in_backward_) {
    s.held_lookups.emplace_back(ids, dy);  // summed and stepped by Step()
    return;
  }
  const kernels::AdamWHyper hyper = Hyper(s);
  if (UsesCompactMoments(policy_)) {
    s.step.add_(1.0);
    const at::Tensor rows = kernels::EmbeddingTokenRowsCuda(ids, dy, s.slot_of);
    kernels::CompactAdamWRowsStepCuda(s.param.tensor->detach(), s.master_low, s.moments, s.step, rows, s.slot_of,
                                      hyper);
    return;
  }
  if (!kernels::AdamWEmbeddingSupports(s.master, s.exp_avg, s.exp_avg_sq, s.step, s.touched_rows, ids, hyper)) {
    // This step's lr makes skipping untouched rows inexact (see kernels/adamw.h): the dense
    // gradient and the usual update.
    s.param.tensor->mutable_grad() =
        at::embedding_dense_backward(dy, ids, s.master.size(0), /*padding_idx=*/-1, /*scale_grad_by_freq=*/false);
    StepSlot(s);
    return;
  }
  s.step.add_(1.0);
  kernels::AdamWEmbeddingStepCuda(s.master, s.exp_avg, s.exp_avg_sq, s.step, s.touched_rows, s.slot_of, ids, dy,
                                  hyper);
}

void AdamW::ZeroGrad() {
  for (Slot& s : slots_) {
    s.param.tensor->mutable_grad() = at::Tensor();
    s.deferred_a = s.deferred_b = s.deferred_offs = s.deferred_sq = at::Tensor();
    s.held_lookups.clear();
    if (s.held_rows.defined()) {
      s.held_rows = at::Tensor();
      s.slot_of.fill_(-1);
    }
  }
}

int64_t AdamW::StateBytes() const {
  int64_t bytes = 0;
  for (const Slot& s : slots_) {
    if (UsesCompactMoments(policy_)) {
      bytes += s.moments.Bytes() + (s.master_low.defined() ? s.master_low.nbytes() : 0);
    } else {
      bytes += s.exp_avg.nbytes() + s.exp_avg_sq.nbytes() + (s.master.is_same(*s.param.tensor) ? 0 : s.master.nbytes());
    }
    bytes += s.step.nbytes();
  }
  return bytes;
}

std::vector<std::pair<std::string, at::Tensor>> AdamW::StateTensors() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const Slot& s : slots_) {
    const std::string& n = s.param.name;
    if (UsesCompactMoments(policy_)) {
      if (s.master_low.defined()) out.emplace_back("master_low." + n, s.master_low.to(at::kCPU));
      out.emplace_back("moment_r." + n, s.moments.r_codes.to(at::kCPU));
      out.emplace_back("moment_s." + n, s.moments.s_codes.to(at::kCPU));
      out.emplace_back("moment_r_scale." + n, s.moments.r_scale.to(at::kCPU));
      out.emplace_back("moment_s_max." + n, s.moments.s_max.to(at::kCPU));
      continue;
    }
    out.emplace_back("exp_avg." + n, s.exp_avg.detach().to(at::kCPU));
    out.emplace_back("exp_avg_sq." + n, s.exp_avg_sq.detach().to(at::kCPU));
    if (!s.master.is_same(*s.param.tensor)) out.emplace_back("master." + n, s.master.to(at::kCPU));
  }
  return out;
}

absl::Status AdamW::LoadState(const SafetensorsReader& reader, int64_t steps) {
  c10::NoGradGuard no_grad;
  for (Slot& s : slots_) {
    const std::string& n = s.param.name;
    const std::vector<int64_t> shape = s.param.tensor->sizes().vec();
    if (UsesCompactMoments(policy_)) {
      const int64_t numel = s.param.tensor->numel(), blocks = kernels::CompactBlocks(numel);
      if (s.master_low.defined()) {
        FTD_ASSIGN_OR_RETURN(at::Tensor low, reader.Load("master_low." + n, shape, at::kShort));
        s.master_low.copy_(low);
      }
      FTD_ASSIGN_OR_RETURN(at::Tensor r, reader.Load("moment_r." + n, std::vector<int64_t>{numel}, at::kChar));
      FTD_ASSIGN_OR_RETURN(at::Tensor sc, reader.Load("moment_s." + n, std::vector<int64_t>{numel}, at::kByte));
      FTD_ASSIGN_OR_RETURN(at::Tensor rs, reader.Load("moment_r_scale." + n, std::vector<int64_t>{blocks}, at::kFloat));
      FTD_ASSIGN_OR_RETURN(at::Tensor sm, reader.Load("moment_s_max." + n, std::vector<int64_t>{blocks}, at::kFloat));
      s.moments.r_codes.copy_(r);
      s.moments.s_codes.copy_(sc);
      s.moments.r_scale.copy_(rs);
      s.moments.s_max.copy_(sm);
    } else {
      FTD_ASSIGN_OR_RETURN(at::Tensor avg, reader.Load("exp_avg." + n, shape));
      FTD_ASSIGN_OR_RETURN(at::Tensor sq, reader.Load("exp_avg_sq." + n, shape));
      s.exp_avg.copy_(avg);
      s.exp_avg_sq.copy_(sq);
      if (!s.master.is_same(*s.param.tensor)) {
        FTD_ASSIGN_OR_RETURN(at::Tensor master, reader.Load("master." + n, shape));
        s.master.copy_(master);
        s.param.tensor->copy_(s.master);
      }
      if (s.touched_rows.defined()) {
        // A row with any nonzero moment must be updated every step.
        s.touched_rows.copy_(s.exp_avg.ne(0).logical_or(s.exp_avg_sq.ne(0)).any(1).to(at::kByte));
      }
    }
    s.step.fill_(static_cast<double>(steps));
  }
  steps_ = steps;
  return absl::OkStatus();
}

class NormInBackwardHook : public torch::autograd::PostAccumulateGradHook {
 public:
  NormInBackwardHook(AdamW* opt, size_t slot) : opt_(opt), slot_(slot) {}
  void operator()(const torch::autograd::Variable&) override { opt_->TakeNorm(opt_->slots_[slot_]); }

 private:
  AdamW* opt_;
  size_t slot_;
};

void AdamW::EnableNormInBackward() {
  if (norm_in_backward_) return;
  TORCH_CHECK(!step_in_backward_, "AdamW: the norm in backward is for steps after backward");
  norm_in_backward_ = true;
  norm_sum_ = at::zeros({}, scalars_.options());
  for (size_t i = 0; i < slots_.size(); ++i) {
    const at::Tensor& t = *slots_[i].param.tensor;
#ifdef FTD_WITH_CUDA
    if (t.is_cuda() && !side_) side_ = std::make_shared<SideStream>(t.device().index(), config_.side_stream_sms);
#endif
    torch::autograd::impl::set_post_acc_grad_hooks(t, std::make_unique<NormInBackwardHook>(this, i));
  }
  InstallExpertSlots();
}

void AdamW::BeginNormInBackward() {
  norm_sum_.zero_();
  for (Slot& s : slots_) s.norm_taken = false;
  norm_active_ = true;
  fused_expert_steps_ = 0;
  if (expert_sink_) SetExpertWeightGradSink(expert_sink_.get());
}

void AdamW::TakeNorm(Slot& s) {
  if (!norm_active_) return;
  c10::NoGradGuard no_grad;
  const at::Tensor grad = s.param.tensor->grad();
  if (!grad.defined()) return;
  s.norm_taken = true;
#ifdef FTD_WITH_CUDA
  if (side_ && grad.is_cuda()) {
    // The side stream waits for the gradient, then reads it while backward continues; the
    // gradient stays alive in .grad() until the step after backward.
    c10::cuda::CUDAStream compute = c10::cuda::getCurrentCUDAStream(grad.device().index());
    at::cuda::CUDAEvent ready;
    ready.record(compute);
    ready.block(side_->stream);
    c10::cuda::CUDAStreamGuard guard(side_->stream);
    kernels::AddSquaredNorm(grad, norm_sum_);
    return;
  }
#endif
  kernels::AddSquaredNorm(grad, norm_sum_);
}

void AdamW::FinishNormInBackward() {
  norm_active_ = false;
  if (expert_sink_ && CurrentExpertWeightGradSink() == expert_sink_.get()) SetExpertWeightGradSink(nullptr);
#ifdef FTD_WITH_CUDA
  if (side_) {
    at::cuda::CUDAEvent done;
    done.record(side_->stream);
    done.block(c10::cuda::getCurrentCUDAStream(side_->stream.device_index()));
  }
#endif
}

}  // namespace ftd::engine
