#include "engine/dist/zero3.h"

#include <stdexcept>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace ftd::engine {
namespace {

void ThrowIfError(const absl::Status& s) {
  if (!s.ok()) throw std::runtime_error(std::string(s.message()));
}

struct HookTarget : public torch::CustomClassHolder {
  Zero3Layers* owner = nullptr;
  int64_t layer = 0;
};

// Identity in forward on the layer's inputs (and the anchor); its backward runs once the
// layer's backward has produced the inputs' gradients, i.e. after every parameter gradient of
// the layer was accumulated (AccumulateGrad nodes run as soon as they are ready).
struct AfterLayerBackward : public torch::autograd::Function<AfterLayerBackward> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                c10::intrusive_ptr<HookTarget> target, at::Tensor anchor,
                                                at::TensorList inputs) {
    ctx->saved_data["target"] = c10::IValue::make_capsule(target);
    torch::autograd::variable_list out;
    for (const at::Tensor& t : inputs) out.push_back(t.view_as(t));
    (void)anchor;
    return out;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto target = c10::static_intrusive_pointer_cast<HookTarget>(ctx->saved_data["target"].toCapsule());
    target->owner->ReduceAfterBackward(target->layer);
    torch::autograd::variable_list out = {at::Tensor(), at::Tensor()};
    for (at::Tensor& g : grads) out.push_back(g);
    return out;
  }
};

// Identity on the layer's outputs; its backward runs before the layer's backward: the unit is
// gathered again.
struct BeforeLayerBackward : public torch::autograd::Function<BeforeLayerBackward> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                c10::intrusive_ptr<HookTarget> target, at::TensorList outputs) {
    ctx->saved_data["target"] = c10::IValue::make_capsule(target);
    torch::autograd::variable_list out;
    for (const at::Tensor& t : outputs) out.push_back(t.view_as(t));
    return out;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto target = c10::static_intrusive_pointer_cast<HookTarget>(ctx->saved_data["target"].toCapsule());
    target->owner->GatherForBackward(target->layer);
    torch::autograd::variable_list out = {at::Tensor()};
    for (at::Tensor& g : grads) out.push_back(g);
    return out;
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Zero3Layers>> Zero3Layers::Create(std::vector<NamedParam> layer_params,
                                                                  int64_t num_layers, Communicator* dp,
                                                                  PrecisionPolicy policy, const AdamWConfig& config) {
  std::unique_ptr<Zero3Layers> z(new Zero3Layers());
  std::vector<std::vector<NamedParam>> by_layer(static_cast<size_t>(num_layers));
  for (NamedParam& p : layer_params) {
    if (p.layer < 0 || p.layer >= num_layers || p.expert) {
      return absl::InvalidArgumentError(absl::StrCat("ZeRO-3 units hold dense layer parameters only, not ", p.name));
    }
    by_layer[static_cast<size_t>(p.layer)].push_back(p);
  }
  z->units_.resize(by_layer.size());
  z->reduced_.assign(by_layer.size(), false);
  for (size_t l = 0; l < by_layer.size(); ++l) {
    if (by_layer[l].empty()) continue;
    FTD_ASSIGN_OR_RETURN(z->units_[l], ShardedAdamW::Create(std::move(by_layer[l]), dp, policy, config,
                                                            absl::StrCat("zero3.layer", l, ".")));
    z->units_[l]->Release();
  }
  const at::Tensor& any = *layer_params.front().tensor;
  z->anchor_ = at::zeros({}, any.options().dtype(at::kFloat)).requires_grad_(true);
  return z;
}

std::vector<at::Tensor> Zero3Layers::Enter(int64_t layer, std::vector<at::Tensor> inputs) {
  ShardedAdamW* unit = units_[static_cast<size_t>(layer)].get();
  if (unit == nullptr) return inputs;
  ThrowIfError(unit->Gather());
  if (!at::GradMode::is_enabled()) return inputs;
  auto target = c10::make_intrusive<HookTarget>();
  target->owner = this;
  target->layer = layer;
  // (A TensorList, so that autograd sees each tensor as an input.)
  return AfterLayerBackward::apply(target, anchor_, at::TensorList(inputs));
}

std::vector<at::Tensor> Zero3Layers::Exit(int64_t layer, std::vector<at::Tensor> outputs) {
  ShardedAdamW* unit = units_[static_cast<size_t>(layer)].get();
  if (unit == nullptr) return outputs;
  unit->Release();
  if (!at::GradMode::is_enabled()) return outputs;
  auto target = c10::make_intrusive<HookTarget>();
  target->owner = this;
  target->layer = layer;
  return BeforeLayerBackward::apply(target, at::TensorList(outputs));
}

void Zero3Layers::GatherForBackward(int64_t layer) {
  c10::NoGradGuard no_grad;
  ThrowIfError(units_[static_cast<size_t>(layer)]->Gather());
}

void Zero3Layers::ReduceAfterBackward(int64_t layer) {
  c10::NoGradGuard no_grad;
  ShardedAdamW* unit = units_[static_cast<size_t>(layer)].get();
  ThrowIfError(unit->ReduceGradients(/*accumulate=*/true));  // drops the full gradients
  unit->Release();
  reduced_[static_cast<size_t>(layer)] = true;
}

absl::Status Zero3Layers::FinishBackward() {
  for (size_t l = 0; l < units_.size(); ++l) {
    if (units_[l] != nullptr && !reduced_[l]) FTD_RETURN_IF_ERROR(units_[l]->ReduceGradients(/*accumulate=*/true));
  }
  return absl::OkStatus();
}

at::Tensor Zero3Layers::SliceSquaredNorm() const {
  at::Tensor total = at::zeros({}, anchor_.options().requires_grad(false));
  for (const auto& unit : units_) {
    if (unit != nullptr) total = total + unit->SliceSquaredNorm();
  }
  return total;
}

void Zero3Layers::SetStepScalars(const at::Tensor& scalars) {
  for (const auto& unit : units_) {
    if (unit != nullptr) unit->step_scalars().copy_(scalars);
  }
}

absl::Status Zero3Layers::Step() {
  for (const auto& unit : units_) {
    if (unit != nullptr) FTD_RETURN_IF_ERROR(unit->Step(/*gather=*/false));
  }
  reduced_.assign(reduced_.size(), false);
  return absl::OkStatus();
}

absl::Status Zero3Layers::GatherAll() {
  c10::NoGradGuard no_grad;
  for (const auto& unit : units_) {
    if (unit != nullptr) FTD_RETURN_IF_ERROR(unit->Gather());
  }
  return absl::OkStatus();
}

void Zero3Layers::ReleaseAll() {
  for (const auto& unit : units_) {
    if (unit != nullptr) unit->Release();
  }
}

std::vector<std::pair<std::string, at::Tensor>> Zero3Layers::StateTensors() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& unit : units_) {
    if (unit == nullptr) continue;
    for (auto& t : unit->StateTensors()) out.push_back(std::move(t));
  }
  return out;
}

absl::Status Zero3Layers::LoadState(const SafetensorsReader& reader, int64_t steps) {
  for (const auto& unit : units_) {
    if (unit != nullptr) FTD_RETURN_IF_ERROR(unit->LoadState(reader, steps));
  }
  return absl::OkStatus();
}

int64_t Zero3Layers::StateBytes() const {
  int64_t bytes = 0;
  for (const auto& unit : units_) bytes += unit != nullptr ? unit->StateBytes() : 0;
  return bytes;
}

int64_t Zero3Layers::SliceBytes() const {
  int64_t bytes = 0;
  for (const auto& unit : units_) bytes += unit != nullptr ? unit->slice_numel() * 4 : 0;
  return bytes;
}

int64_t Zero3Layers::ParameterBytes() const {
  int64_t bytes = 0;
  for (const auto& unit : units_) bytes += unit != nullptr ? unit->ParameterBytes() : 0;
  return bytes;
}

int64_t Zero3Layers::MaxUnitParameterBytes() const {
  int64_t bytes = 0;
  for (const auto& unit : units_) bytes = std::max<int64_t>(bytes, unit != nullptr ? unit->ParameterBytes() : 0);
  return bytes;
}

}  // namespace ftd::engine
