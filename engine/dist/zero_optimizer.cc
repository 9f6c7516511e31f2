#include "engine/dist/zero_optimizer.h"

#include <algorithm>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/io/safetensors.h"
#include "kernels/adamw.h"
#include "kernels/stochastic_round.h"

namespace ftd::engine {
namespace {

constexpr int64_t kAlign = kernels::kCompactBlock;

int64_t RoundUp(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// dst's values := src (same numel), through a tensor of its own aliasing dst's storage: dst's
// autograd version counter is not bumped, so variables a forward saved stay valid (ZeRO-3
// refills parameters between a layer's forward and its backward).
void CopyWithoutVersionBump(const at::Tensor& dst, const at::Tensor& src) {
  at::Tensor alias = at::empty({0}, dst.options().requires_grad(false));
  alias.set_(dst.storage(), dst.storage_offset(), dst.sizes(), dst.strides());
  alias.view({-1}).copy_(src.reshape({-1}));
}

// Frees / reallocates a parameter's storage in place (the StorageImpl, and so every view and
// saved variable of the tensor, is kept).
void ReleaseStorage(const at::Tensor& t) {
  c10::StorageImpl* s = t.storage().unsafeGetStorageImpl();
  s->set_data_ptr_noswap(at::DataPtr(nullptr, s->device()));
  s->set_nbytes(0);
}

void AllocateStorage(const at::Tensor& t) {
  c10::StorageImpl* s = t.storage().unsafeGetStorageImpl();
  const size_t bytes = static_cast<size_t>((t.storage_offset() + t.numel()) * t.element_size());
  s->set_data_ptr_noswap(s->allocator()->allocate(bytes));
  s->set_nbytes(bytes);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ShardedAdamW>> ShardedAdamW::Create(std::vector<NamedParam> params, Communicator* dp,
                                                                   PrecisionPolicy policy, const AdamWConfig& config,
                                                                   std::string state_prefix) {
  c10::NoGradGuard no_grad;
  std::unique_ptr<ShardedAdamW> opt(new ShardedAdamW(dp, policy, config, std::move(state_prefix)));
  if (params.empty()) return absl::InvalidArgumentError("ShardedAdamW needs at least one parameter");
  const at::Tensor& first = *params[0].tensor;
  for (const NamedParam& p : params) {
    const at::Tensor& t = *p.tensor;
    if (!t.defined() || !t.requires_grad()) {
      return absl::InvalidArgumentError(absl::StrCat("parameter ", p.name, " does not require gradients"));
    }
    if (t.scalar_type() != first.scalar_type() || t.device() != first.device()) {
      return absl::InvalidArgumentError(absl::StrCat("parameter ", p.name, " differs in dtype or device from ",
                                                     params[0].name, " (one flat buffer holds them all)"));
    }
    opt->offsets_.push_back(opt->total_numel_);
    opt->decay_.push_back(DecaysWeight(p.name));
    opt->total_numel_ += RoundUp(t.numel(), kAlign);
  }
  if (UsesCompactMoments(policy) && first.scalar_type() != at::kBFloat16 && first.scalar_type() != at::kFloat) {
    return absl::InvalidArgumentError(absl::StrCat("precision ", PrecisionPolicyName(policy),
                                                   " needs bf16 or fp32 parameters, not ",
                                                   c10::toString(first.scalar_type())));
  }
  opt->params_ = std::move(params);
  opt->stepped_.assign(opt->params_.size(), false);
  const int64_t W = dp->size();
  opt->slice_numel_ = RoundUp((opt->total_numel_ + W - 1) / W, kAlign);
  const int64_t begin = dp->rank() * opt->slice_numel_, end = begin + opt->slice_numel_;

  // The slice's weights: in the parameters' dtype where there is no master (bf16_pure, and
  // compact_sr, whose bf16 weights are rounded stochastically), else fp32.
  const at::ScalarType state_dtype =
      policy == PrecisionPolicy::kBf16Pure || policy == PrecisionPolicy::kCompactSr ? first.scalar_type() : at::kFloat;
  auto state_opts = first.options().dtype(state_dtype).requires_grad(false);
  opt->master_ = at::zeros({opt->slice_numel_}, state_opts);
  if (UsesCompactMoments(policy)) {
    opt->compact_ = kernels::CompactMoments::Zeros(opt->slice_numel_, first.device());
  } else {
    opt->exp_avg_ = at::zeros({opt->slice_numel_}, state_opts);
    opt->exp_avg_sq_ = at::zeros({opt->slice_numel_}, state_opts);
  }
  for (size_t i = 0; i < opt->params_.size(); ++i) {
    const int64_t lo = std::max(begin, opt->offsets_[i]);
    const int64_t hi = std::min(end, opt->offsets_[i] + opt->params_[i].tensor->numel());
    if (lo >= hi) continue;
    Segment s{i, lo - begin, lo - opt->offsets_[i], hi - lo, at::zeros({}, first.options().dtype(at::kFloat)),
              kernels::stochastic_round::SaltOf(opt->params_[i].name.c_str())};
    opt->master_.narrow(0, s.slice_offset, s.length)
        .copy_(opt->params_[i].tensor->detach().reshape({-1}).narrow(0, s.param_offset, s.length));
    opt->segments_.push_back(std::move(s));
  }
  opt->scalars_ = at::tensor({0.0f, 1.0f}, at::TensorOptions().dtype(at::kFloat)).to(first.device());
  return opt;
}

void ShardedAdamW::SetStepScalars(double lr, double grad_scale) {
  c10::NoGradGuard no_grad;
  scalars_.select(0, 0).fill_(lr);
  scalars_.select(0, 1).fill_(grad_scale);
}

absl::Status ShardedAdamW::ReduceGradients(bool accumulate) {
  c10::NoGradGuard no_grad;
  accumulate = accumulate && grad_.defined();
  const at::Tensor& first = *params_[0].tensor;
  at::Tensor has_grad = at::zeros({static_cast<int64_t>(params_.size())}, first.options().dtype(at::kFloat));
  for (size_t i = 0; i < params_.size(); ++i) {
    if (params_[i].tensor->grad().defined()) has_grad[i].fill_(1.0);
  }
  FTD_RETURN_IF_ERROR(dp_->AllReduce({has_grad}, ReduceKind::kMax));
  at::Tensor has_grad_cpu = has_grad.to(at::kCPU);
  for (size_t i = 0; i < params_.size(); ++i) {
    stepped_[i] = (accumulate && stepped_[i]) || has_grad_cpu[i].item<float>() > 0;
  }

  // The flat fp32 gradient [W * S]: each parameter at its offset, zeros in the gaps.
  const int64_t padded = slice_numel_ * dp_->size();
  at::Tensor flat = at::zeros({padded}, first.options().dtype(at::kFloat));
  for (size_t i = 0; i < params_.size(); ++i) {
    NamedParam& p = params_[i];
    at::Tensor g = p.tensor->grad();
    if (g.defined()) flat.narrow(0, offsets_[i], g.numel()).copy_(g.reshape({-1}));
    p.tensor->mutable_grad() = at::Tensor();
  }
  at::Tensor reduced = at::empty({slice_numel_}, first.options().dtype(at::kFloat));
  FTD_RETURN_IF_ERROR(dp_->ReduceScatter(reduced, flat));
  grad_ = accumulate ? grad_.add_(reduced) : reduced;
  return absl::OkStatus();
}

at::Tensor ShardedAdamW::SliceSquaredNorm() const {
  c10::NoGradGuard no_grad;
  return grad_.defined() ? grad_.square().sum() : at::zeros({}, master_.options().dtype(at::kFloat));
}

absl::Status ShardedAdamW::Step(bool gather) {
  c10::NoGradGuard no_grad;
  if (!grad_.defined()) return absl::FailedPreconditionError("ShardedAdamW::Step before ReduceGradients");
  // The compact kernels take the fp32 gradient with weights of either dtype; the others one dtype.
  at::Tensor grad = grad_.scalar_type() == master_.scalar_type() || UsesCompactMoments(policy_)
                        ? grad_
                        : grad_.to(master_.scalar_type());
  for (Segment& s : segments_) {
    if (!stepped_[s.param]) continue;
    s.step.add_(1.0);
    kernels::AdamWHyper hyper{/*lr: step_scalars()*/ 0.0, config_.beta1, config_.beta2, decay_[s.param] ? config_.weight_decay : 0.0,
                              config_.eps};
    hyper.scalars = scalars_;
    // compact_sr: the rounding draws the bits of the elements' offsets in the whole parameter, so
    // a shard rounds as the unsharded optimizer would.
    hyper.round_salt = s.round_salt;
    hyper.round_index_base = s.param_offset;
    at::Tensor p = master_.narrow(0, s.slice_offset, s.length);
    at::Tensor g = grad.narrow(0, s.slice_offset, s.length);
    if (UsesCompactMoments(policy_)) {
      kernels::CompactAdamWStep(p, at::Tensor(), g, compact_.Narrow(s.slice_offset, s.length), s.step, hyper);
      continue;
    }
    at::Tensor a = exp_avg_.narrow(0, s.slice_offset, s.length);
    at::Tensor q = exp_avg_sq_.narrow(0, s.slice_offset, s.length);
    if (kernels::AdamWCudaSupports(p, g, a, q, s.step) && kernels::StepScalarsValid(scalars_, p.device())) {
      // CUDA: kernels/adamw.h per segment, the same arithmetic at ~2.7 TB/s (ATen's: ~1.7 on bf16).
      kernels::AdamWStepCuda(p, g, a, q, s.step, hyper);
      continue;
    }
    at::Tensor scaled = g * scalars_.select(0, 1).to(g.scalar_type());
    at::_fused_adamw_({p}, {scaled}, {a}, {q}, /*max_exp_avg_sqs=*/{}, {s.step}, scalars_.select(0, 0),
                      config_.beta1, config_.beta2, hyper.weight_decay, config_.eps, /*amsgrad=*/false,
                      /*maximize=*/false, std::nullopt, std::nullopt);
  }
  grad_ = at::Tensor();
  return gather ? GatherParameters(/*stepped_only=*/true) : absl::OkStatus();
}

absl::Status ShardedAdamW::GatherParameters(bool stepped_only) {
  // Every rank's slice, in the parameters' dtype (rounded as the compact policy's unsharded
  // AdamW rounds its masters), back into the full parameters.
  const at::Tensor& first = *params_[0].tensor;
  at::Tensor mine = policy_ == PrecisionPolicy::kCompact && first.scalar_type() == at::kBFloat16
                        ? kernels::SplitMaster(master_).first
                        : master_.to(first.scalar_type());
  at::Tensor gathered = at::empty({slice_numel_ * dp_->size()}, first.options().requires_grad(false));
  FTD_RETURN_IF_ERROR(dp_->AllGather(gathered, mine));
  for (size_t i = 0; i < params_.size(); ++i) {
    if (stepped_only && !stepped_[i]) continue;
    at::Tensor& t = *params_[i].tensor;
    CopyWithoutVersionBump(t, gathered.narrow(0, offsets_[i], t.numel()));
  }
  return absl::OkStatus();
}

absl::Status ShardedAdamW::Gather() {
  c10::NoGradGuard no_grad;
  if (released_) {
    for (NamedParam& p : params_) AllocateStorage(*p.tensor);
    released_ = false;
  }
  return GatherParameters(/*stepped_only=*/false);
}

void ShardedAdamW::Release() {
  if (released_) return;
  for (NamedParam& p : params_) ReleaseStorage(*p.tensor);
  released_ = true;
}

int64_t ShardedAdamW::ParameterBytes() const {
  int64_t bytes = 0;
  for (const NamedParam& p : params_) bytes += p.tensor->numel() * p.tensor->element_size();
  return bytes;
}

at::Tensor ShardedAdamW::Layout() const {
  // The parameters' sizes, the group size, and the alignment of their offsets (a layout written
  // without it is refused).
  std::vector<int64_t> layout;
  for (const NamedParam& p : params_) layout.push_back(p.tensor->numel());
  layout.push_back(dp_->size());
  layout.push_back(kAlign);
  return at::tensor(layout, at::kLong);
}

std::vector<std::pair<std::string, at::Tensor>> ShardedAdamW::StateTensors() const {
  std::vector<std::pair<std::string, at::Tensor>> out = {{prefix_ + "master", master_.to(at::kCPU)},
                                                         {prefix_ + "layout", Layout()}};
  if (UsesCompactMoments(policy_)) {
    out.emplace_back(prefix_ + "moment_r", compact_.r_codes.to(at::kCPU));
    out.emplace_back(prefix_ + "moment_s", compact_.s_codes.to(at::kCPU));
    out.emplace_back(prefix_ + "moment_r_scale", compact_.r_scale.to(at::kCPU));
    out.emplace_back(prefix_ + "moment_s_max", compact_.s_max.to(at::kCPU));
  } else {
    out.emplace_back(prefix_ + "exp_avg", exp_avg_.to(at::kCPU));
    out.emplace_back(prefix_ + "exp_avg_sq", exp_avg_sq_.to(at::kCPU));
  }
  return out;
}

absl::Status ShardedAdamW::LoadState(const SafetensorsReader& reader, int64_t steps) {
  c10::NoGradGuard no_grad;
  FTD_ASSIGN_OR_RETURN(at::Tensor layout, reader.Load(prefix_ + "layout"));
  at::Tensor expected = Layout();
  if (!layout.sizes().equals(expected.sizes()) || !layout.to(at::kLong).equal(expected)) {
    return absl::FailedPreconditionError(absl::StrCat(
        reader.path(), ": the sharded optimizer state was written for a different model or data-parallel size"));
  }
  const std::vector<int64_t> shape = {slice_numel_};
  FTD_ASSIGN_OR_RETURN(at::Tensor master, reader.Load(prefix_ + "master", shape, master_.scalar_type()));
  master_.copy_(master);
  if (UsesCompactMoments(policy_)) {
    const std::vector<int64_t> blocks = {kernels::CompactBlocks(slice_numel_)};
    FTD_ASSIGN_OR_RETURN(at::Tensor r, reader.Load(prefix_ + "moment_r", shape, at::kChar));
    FTD_ASSIGN_OR_RETURN(at::Tensor sc, reader.Load(prefix_ + "moment_s", shape, at::kByte));
    FTD_ASSIGN_OR_RETURN(at::Tensor rs, reader.Load(prefix_ + "moment_r_scale", blocks, at::kFloat));
    FTD_ASSIGN_OR_RETURN(at::Tensor sm, reader.Load(prefix_ + "moment_s_max", blocks, at::kFloat));
    compact_.r_codes.copy_(r);
    compact_.s_codes.copy_(sc);
    compact_.r_scale.copy_(rs);
    compact_.s_max.copy_(sm);
  } else {
    FTD_ASSIGN_OR_RETURN(at::Tensor avg, reader.Load(prefix_ + "exp_avg", shape));
    FTD_ASSIGN_OR_RETURN(at::Tensor sq, reader.Load(prefix_ + "exp_avg_sq", shape));
    exp_avg_.copy_(avg);
    exp_avg_sq_.copy_(sq);
  }
  for (Segment& s : segments_) s.step.fill_(static_cast<double>(steps));
  // The parameters continue from the masters, exactly as after an uninterrupted step (released
  // ones when they are next gathered).
  return released_ ? absl::OkStatus() : GatherParameters(/*stepped_only=*/false);
}

int64_t ShardedAdamW::StateBytes() const {
  return master_.nbytes() +
         (UsesCompactMoments(policy_) ? compact_.Bytes() : exp_avg_.nbytes() + exp_avg_sq_.nbytes());
}

}  // namespace ftd::engine
