#include "engine/train/train_step.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <map>
#include <optional>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#ifdef FTD_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "engine/dist/expert_parallel.h"
#include "engine/dist/process_groups.h"
#include "engine/dist/zero3.h"
#include "engine/dist/zero_optimizer.h"
#include "engine/model/core/moe/router.h"
#include "engine/model/varlen_attention.h"
#include "engine/util/compute_stream.h"
#include "engine/util/device_memory.h"

namespace ftd::engine {
namespace {

// Index of the per-step device values (State::values).
enum StepValue : int64_t { kLr = 0, kGradScale = 1, kAuxScale = 2, kInvTargets = 3, kNumValues = 4 };

// A micro-batch's varlen bucket (its part of the graph key): 0 for rows without document
// boundaries, else the number of varlen sequences rounded up to a power of two (cu_seqlens is
// padded to it with empty sequences); -1 when there are too many documents for a graph.
constexpr int64_t kMaxGraphSequences = 256;
int64_t VarlenBucket(int64_t num_sequences, bool varlen) {
  if (!varlen) return 0;
  int64_t bucket = 1;
  while (bucket < num_sequences) bucket <<= 1;
  return bucket > kMaxGraphSequences ? -1 : bucket;
}

// The fused loss's rows (Batch::loss_rows) for a micro-batch of `tokens` rows of which `targets`
// have a target: the targets rounded up to an eighth of the rows, so that a few CUDA graphs (one
// an eighth) serve batches of any prompt share; -1 (every row) when that is not fewer.
int64_t LossRowsEighth(int64_t tokens) { return std::max<int64_t>(1, (tokens + 7) / 8); }
int64_t LossRows(int64_t tokens, int64_t targets) {
  const int64_t eighth = LossRowsEighth(tokens);
  const int64_t rows = (targets + eighth - 1) / eighth * eighth;
  return rows >= tokens ? -1 : rows;
}

// Which eighth LossRows chose (0-7), or 8 for every row: the loss's part of the graph key.
int64_t LossRowsKey(int64_t tokens, int64_t loss_rows) {
  return loss_rows < 0 ? 8 : loss_rows / LossRowsEighth(tokens);
}

// Host tensor -> device, without making the host wait (pinned staging, copied on the stream).
at::Tensor Upload(const at::Tensor& host, c10::Device device) {
  if (!device.is_cuda()) return host;
  return host.pin_memory().to(device, /*non_blocking=*/true);
}

void UploadInto(const at::Tensor& dst, const at::Tensor& host) {
  if (!dst.is_cuda()) {
    dst.copy_(host);
    return;
  }
  dst.copy_(host.pin_memory(), /*non_blocking=*/true);
}

}  // namespace

struct TrainStep::State {
  MoeTransformer* model = nullptr;
  ProcessGroups* groups = nullptr;
  ExpertParallelDispatch* dispatch = nullptr;
  TrainStepOptions o;
  c10::Device device = at::kCPU;
  bool cuda = false;
  int world = 1;
  bool in_backward = false;
  bool norm_in_backward = false;  // one process, optimizer after backward: the norm taken in backward
  int64_t moe_layers = 0, num_experts = 0;
  // One process: one AdamW over every parameter. Several ranks: the dense parameters in a ZeRO-2
  // ShardedAdamW over the world, the experts in an AdamW (reduced over their replicas).
  std::unique_ptr<AdamW> adamw;
  std::unique_ptr<ShardedAdamW> dense;
  std::unique_ptr<Zero3Layers> zero3;  // ZeRO-3: the decoder layers' dense parameters
  std::vector<NamedParam> expert_params;
  double normaliser = 1.0;  // F: the loss backward starts from is loss_sum / F
  int64_t global_micro = 1;
  at::Tensor values;        // [kNumValues] fp32 on the device
  at::Tensor loss_acc;      // [] fp32: this rank's reported loss
  at::Tensor load_acc;      // [L, E] fp32: tokens per expert
  at::Tensor grad_norm;     // [] fp32
  at::Tensor results;       // [2 + L * E] fp32 on the device
  std::optional<ComputeStreamScope> stream;
  int64_t graph_memory_bytes = 0;
  // A launched step until Wait reads it (two may be in flight on CUDA): its results copied to
  // pinned host memory, whether it was a replay, and its phase boundaries: per micro-batch its
  // start, end of forward and end of backward (3 m, 3 m + 1, 3 m + 2), then the update's start
  // and end (3 M, 3 M + 1), as device events (CUDA) or host times (CPU).
  struct InFlight {
    at::Tensor results_host;
    bool replayed = false;
    int64_t index = 0;         // launches before this one
    bool pipelined = false;    // launched while the previous step was still in flight
    std::vector<std::chrono::steady_clock::time_point> clock;
#ifdef FTD_WITH_CUDA
    at::cuda::CUDAEvent done;
    std::vector<at::cuda::CUDAEvent> events;
#endif
  };
  InFlight slots[2];
  int first_slot = 0, in_flight = 0;
  int64_t launches = 0;
#ifdef FTD_WITH_CUDA
  // The end of launch i on the device is step_end[i % 3], timed: a pipelined step's time runs
  // from the previous step's end to its own. Three, because launch i + 1 may be recorded
  // before launch i is waited for, and launch i - 1's end must still be there then.
  std::vector<at::cuda::CUDAEvent> step_end;
#endif
  InFlight& current() { return slots[(first_slot + in_flight) % 2]; }  // the one being launched
#ifdef FTD_WITH_CUDA
  struct Graph {
    int64_t eager_steps = 0;
    std::unique_ptr<at::cuda::CUDAGraph> graph;
    at::Tensor cu_seqlens;  // [sequences + 1] int32: this bucket's padded boundaries
  };
  std::map<int64_t, Graph> graphs;
  std::optional<at::cuda::MempoolId_t> pool;
#endif
  bool graphs_enabled = false;
  std::string graph_note;  // why graphs are off, for Describe()
  // Graph inputs: one micro-batch of [micro_batch, seq_len], refilled in place every step.
  at::Tensor static_ids, static_targets, static_positions;

  // Forward and backward of micro-batch `m` (device tensors), the loss accumulated; `timed`:
  // the phase boundaries are marked (device events on CUDA, the host clock on the CPU, where
  // everything runs synchronously).
  void MicroStep(const Batch& batch, size_t m, bool timed);
  void Mark(size_t index, bool timed);
  // The update after backward: the norm, the clipping factor, AdamW; one process only.
  void UpdateAfterBackward();
  // The same over several ranks (collectives; never captured).
  absl::Status UpdateAfterBackwardDistributed();
  // Everything of a step after its inputs are on the device.
  absl::Status Body(std::vector<Batch>& batches, bool capturing);
  // The MoE layers' selection biases towards balance, from the step's expert load (summed over
  // the ranks, so that every rank moves them alike).
  absl::Status UpdateRouterBias();
};

absl::Status TrainStep::State::UpdateRouterBias() {
  c10::NoGradGuard no_grad;
  at::Tensor load = load_acc;  // [L, E] this rank's tokens per expert
  if (world > 1) {
    load = load_acc.clone();
    FTD_RETURN_IF_ERROR(groups->world->AllReduce({load}));
  }
  int64_t i = 0;
  for (LayerWeights& layer : model->weights().layers) {
    if (!layer.is_moe) continue;
    if (layer.moe.router_bias.defined()) UpdateSelectionBias(layer.moe.router_bias, load.select(0, i), o.router_bias_update_speed);
    ++i;
  }
  return absl::OkStatus();
}

void TrainStep::State::Mark(size_t index, bool timed) {
  if (!timed) return;
#ifdef FTD_WITH_CUDA
  if (cuda) {
    current().events[index].record();
    return;
  }
#endif
  current().clock[index] = std::chrono::steady_clock::now();
}

void TrainStep::State::MicroStep(const Batch& batch, size_t m, bool timed) {
  const ModelConfig& config = model->config();
  Mark(3 * m, timed);
  ForwardResult fr = model->Forward(batch, /*return_logits=*/false);
  // Backward starts from loss_sum / F: the fused loss scales its GEMMs by 1/F (exact, no host
  // check); the optimizer multiplies by F / targets. The aux loss is scaled by targets / F here
  // so that it comes out of that multiplication unscaled.
  at::Tensor loss = fr.loss_sum * (1.0 / normaliser);
  at::Tensor reported = fr.loss_sum.detach() * values.select(0, kInvTargets);
  if (fr.aux_loss.defined()) {
    const double coef = config.router_aux_loss_coef / static_cast<double>(global_micro);
    loss = loss + fr.aux_loss * values.select(0, kAuxScale) * coef;
    reported = reported + fr.aux_loss.detach() * coef;
  }
  loss_acc.add_(reported);
  if (moe_layers > 0 && static_cast<int64_t>(fr.expert_counts.size()) == moe_layers) {
    load_acc.add_(at::stack(fr.expert_counts).to(at::kFloat));
  }
  Mark(3 * m + 1, timed);
  if (in_backward) {
    adamw->step_scalars().copy_(values.narrow(0, kLr, 2));
    if (adamw->update_grad_sq_sum().defined()) adamw->update_grad_sq_sum().zero_();
    adamw->BeginStepInBackward();
    loss.backward();
    adamw->FinishStepInBackward();
  } else if (norm_in_backward && m + 1 == static_cast<size_t>(o.micro_batches)) {
    // The last micro-batch completes every gradient: their norms are taken as they complete.
    adamw->BeginNormInBackward();
    loss.backward();
    adamw->FinishNormInBackward();
  } else {
    loss.backward();
  }
  Mark(3 * m + 2, timed);
}

void TrainStep::State::UpdateAfterBackward() {
  c10::NoGradGuard no_grad;
  // The true gradient is the accumulated one times F / targets.
  at::Tensor norm = adamw->SquaredGradNorm().sqrt() * values.select(0, kGradScale);
  at::Tensor scale = values.select(0, kGradScale);
  if (o.grad_clip > 0) scale = scale * (o.grad_clip / (norm + 1e-6)).clamp_max(1.0);
  adamw->step_scalars().select(0, 0).copy_(values.select(0, kLr));
  adamw->step_scalars().select(0, 1).copy_(scale);
  adamw->Step();
  adamw->ZeroGrad();
  grad_norm.copy_(norm);
}

absl::Status TrainStep::State::UpdateAfterBackwardDistributed() {
  c10::NoGradGuard no_grad;
  FTD_RETURN_IF_ERROR(dense->ReduceGradients());
  if (zero3) FTD_RETURN_IF_ERROR(zero3->FinishBackward());  // the layers reduced theirs in backward
  // Expert gradients: summed over the ranks that hold the same experts.
  std::vector<at::Tensor> expert_grads;
  for (NamedParam& p : expert_params) {
    if (!p.tensor->grad().defined()) p.tensor->mutable_grad() = at::zeros_like(*p.tensor);
    expert_grads.push_back(p.tensor->grad());
  }
  if (!expert_grads.empty() && groups->replicas->size() > 1) {
    std::vector<at::Tensor> flat_parts;
    for (const at::Tensor& g : expert_grads) flat_parts.push_back(g.reshape({-1}).to(at::kFloat));
    at::Tensor flat = at::cat(flat_parts);
    FTD_RETURN_IF_ERROR(groups->replicas->AllReduce({flat}));
    int64_t offset = 0;
    for (at::Tensor& g : expert_grads) {
      g.view({-1}).copy_(flat.narrow(0, offset, g.numel()));
      offset += g.numel();
    }
  }
  at::Tensor expert_sq = adamw ? adamw->SquaredGradNorm() : at::zeros({}, values.options());
  // Each expert's gradient lives on num_replicas ranks: count it once.
  at::Tensor dense_sq = dense->SliceSquaredNorm();
  if (zero3) dense_sq = dense_sq + zero3->SliceSquaredNorm();
  at::Tensor total_sq = (dense_sq + expert_sq / groups->mesh.num_replicas()).to(at::kDouble).reshape({1});
  FTD_RETURN_IF_ERROR(groups->world->AllReduce({total_sq}));
  at::Tensor norm = total_sq.to(at::kFloat).reshape({}).sqrt() * values.select(0, kGradScale);
  at::Tensor scale = values.select(0, kGradScale);
  if (o.grad_clip > 0) scale = scale * (o.grad_clip / (norm + 1e-6)).clamp_max(1.0);
  for (const at::Tensor& scalars : {dense->step_scalars(), adamw ? adamw->step_scalars() : at::Tensor()}) {
    if (!scalars.defined()) continue;
    scalars.select(0, 0).copy_(values.select(0, kLr));
    scalars.select(0, 1).copy_(scale);
  }
  FTD_RETURN_IF_ERROR(dense->Step());
  if (zero3) {
    zero3->SetStepScalars(dense->step_scalars());
    FTD_RETURN_IF_ERROR(zero3->Step());
  }
  if (adamw) {
    adamw->Step();
    adamw->ZeroGrad();
  }
  grad_norm.copy_(norm);
  return absl::OkStatus();
}

absl::Status TrainStep::State::Body(std::vector<Batch>& batches, bool capturing) {
  loss_acc.zero_();
  load_acc.zero_();
  const bool timed = !capturing;
  for (size_t m = 0; m < batches.size(); ++m) MicroStep(batches[m], m, timed);
  const size_t update = 3 * batches.size();
  Mark(update, timed);
  if (in_backward) {
    const at::Tensor& sq = adamw->update_grad_sq_sum();
    if (sq.defined()) grad_norm.copy_(sq.sqrt().reshape({}));
  } else if (world == 1) {
    UpdateAfterBackward();
  } else {
    FTD_RETURN_IF_ERROR(UpdateAfterBackwardDistributed());
  }
  if (o.router_bias_update_speed > 0 && moe_layers > 0) FTD_RETURN_IF_ERROR(UpdateRouterBias());
  Mark(update + 1, timed);
  results.select(0, 0).copy_(loss_acc);
  results.select(0, 1).copy_(grad_norm);
  if (load_acc.numel() > 0) results.narrow(0, 2, load_acc.numel()).copy_(load_acc.reshape({-1}));
  return absl::OkStatus();
}

TrainStep::TrainStep(std::unique_ptr<State> state) : s_(std::move(state)) {}
TrainStep::~TrainStep() = default;

absl::StatusOr<std::unique_ptr<TrainStep>> TrainStep::Create(MoeTransformer* model, ProcessGroups* groups,
                                                             ExpertParallelDispatch* dispatch,
                                                             const TrainStepOptions& options) {
  auto s = std::make_unique<State>();
  s->model = model;
  s->groups = groups;
  s->dispatch = dispatch;
  s->o = options;
  if (options.micro_batches < 1 || options.micro_batch < 1 || options.seq_len < 1) {
    return absl::InvalidArgumentError("TrainStep: micro_batches, micro_batch and seq_len must be positive");
  }
  s->device = model->options().device;
  s->cuda = s->device.is_cuda();
  s->world = groups ? groups->world->size() : 1;
  s->global_micro = options.micro_batches * s->world;
  s->normaliser = static_cast<double>(s->global_micro * options.micro_batch * options.seq_len);
  const ModelConfig& config = model->config();
  s->moe_layers = config.NumMoeLayers();
  s->num_experts = config.num_experts;
  s->in_backward = options.grad_clip <= 0 && options.micro_batches == 1 && s->world == 1;
  if (s->cuda) s->stream.emplace(s->device);  // high priority; side-stream updates yield to it

  if (options.zero_stage < 0 || options.zero_stage > 3) {
    return absl::InvalidArgumentError(absl::StrCat("parallelism.zero_stage must be 0..3, not ", options.zero_stage));
  }
  if (options.router_bias_update_speed < 0) {
    return absl::InvalidArgumentError("the router bias update speed must not be negative");
  }
  if (options.router_bias_update_speed > 0 && !config.router_correction_bias) {
    return absl::InvalidArgumentError(absl::StrCat("router bias updates need a router with a selection bias (",
                                                   config.model_type, " has none)"));
  }
  std::vector<NamedParam> all = model->Parameters(), dense, layer_dense;
  const bool zero3 = s->world > 1 && options.zero_stage == 3;
  for (NamedParam& p : all) {
    if (p.expert) {
      s->expert_params.push_back(p);
    } else {
      (zero3 && p.layer >= 0 ? layer_dense : dense).push_back(p);
    }
  }
  if (s->world == 1) {
    FTD_ASSIGN_OR_RETURN(s->adamw, AdamW::Create(all, options.precision, options.adam));
  } else {
    FTD_ASSIGN_OR_RETURN(s->dense, ShardedAdamW::Create(dense, groups->world.get(), options.precision, options.adam));
    if (zero3) {
      FTD_ASSIGN_OR_RETURN(s->zero3, Zero3Layers::Create(layer_dense, config.num_hidden_layers, groups->world.get(),
                                                         options.precision, options.adam));
      model->SetLayerHooks(s->zero3.get());
    }
    if (!s->expert_params.empty()) {
      FTD_ASSIGN_OR_RETURN(s->adamw, AdamW::Create(s->expert_params, options.precision, options.adam));
      // This rank's experts [begin, begin + count) of each stacked weight: compact_sr rounds them
      // with the bits one process holding every expert would draw.
      const int64_t begin = model->options().expert_begin, count = model->options().expert_count;
      for (const NamedParam& p : s->expert_params) {
        const at::Tensor& t = *p.tensor;
        if (begin > 0 && count > 0 && t.dim() >= 1 && t.size(0) == count) {
          FTD_RETURN_IF_ERROR(s->adamw->SetRoundingOffset(t, begin * (t.numel() / count)));
        }
      }
    }
  }
  if (s->in_backward) {
    s->adamw->EnableStepInBackward();
  } else if (s->world == 1) {
    s->norm_in_backward = true;
    s->adamw->EnableNormInBackward();
  }
  // The embedding table is stepped from its lookup's token rows (no dense [V, H] gradient)
  // wherever the optimizer serves it; at::embedding otherwise.
  if (s->world == 1) {
    AdamW* adamw = s->adamw.get();
    model->SetEmbeddingLookup(
        [adamw](const at::Tensor& table, const at::Tensor& ids) { return adamw->EmbeddingLookup(table, ids); });
  }

  auto f32 = at::TensorOptions().dtype(at::kFloat).device(s->device);
  s->values = at::zeros({kNumValues}, f32);
  s->loss_acc = at::zeros({}, f32);
  s->load_acc = at::zeros({s->moe_layers, s->num_experts}, f32);
  s->grad_norm = at::zeros({}, f32);
  s->results = at::zeros({2 + s->moe_layers * s->num_experts}, f32);

  const size_t marks = 3 * static_cast<size_t>(options.micro_batches) + 2;
  for (State::InFlight& slot : s->slots) {
    slot.clock.resize(marks);
#ifdef FTD_WITH_CUDA
    if (s->cuda) {
      slot.results_host = at::empty(s->results.sizes(), at::TensorOptions().dtype(at::kFloat).pinned_memory(true));
      for (size_t i = 0; i < marks; ++i) slot.events.emplace_back(cudaEventDefault);  // timing on
    }
#endif
  }
#ifdef FTD_WITH_CUDA
  if (s->cuda) {
    for (int i = 0; i < 3; ++i) s->step_end.emplace_back(cudaEventDefault);
  }
#endif
  // CUDA graphs: one device, one micro-batch per step, the model's own (local) expert dispatch.
  if (!s->cuda) {
    s->graph_note = "CUDA graphs off (CPU)";
  } else if (!options.cuda_graphs) {
    s->graph_note = "CUDA graphs off (as asked)";
  } else if (s->world > 1) {
    s->graph_note = "CUDA graphs off (several ranks: collectives between phases)";
  } else if (options.micro_batches > 1) {
    s->graph_note = "CUDA graphs off (gradient accumulation)";
  } else if (model->options().dtype != at::kBFloat16) {
    // Grouped GEMMs take bf16; other dtypes run the experts one GEMM each, sized by counts read
    // on the host, which a graph capture cannot do (engine/model/core/moe/grouped_experts.cc).
    s->graph_note = "CUDA graphs off (the experts' per-expert GEMMs outside bf16 read their sizes on the host)";
  } else {
    s->graphs_enabled = true;
    auto i64 = at::TensorOptions().dtype(at::kLong).device(s->device);
    s->static_ids = at::zeros({options.micro_batch, options.seq_len}, i64);
    s->static_targets = at::full({options.micro_batch, options.seq_len}, -100, i64);
    s->static_positions = at::zeros({options.micro_batch, options.seq_len}, i64);
  }
  return std::unique_ptr<TrainStep>(new TrainStep(std::move(s)));
}

bool TrainStep::optimizer_in_backward() const { return s_->in_backward; }

int64_t TrainStep::expert_weights_from_gemm() const { return s_->adamw ? s_->adamw->fused_expert_steps() : 0; }

std::string TrainStep::Describe() const {
  std::string mode = s_->in_backward ? "optimizer in backward (no clipping, one micro-batch)"
                                     : absl::StrFormat("optimizer after backward (global-norm clip %g)", s_->o.grad_clip);
  std::string zero = s_->world == 1 ? ""
                     : s_->zero3   ? ", ZeRO-3 (decoder layers' dense parameters gathered per layer)"
                                   : ", ZeRO-2";
  std::string bias = s_->o.router_bias_update_speed > 0
                         ? absl::StrFormat(", router bias update speed %g", s_->o.router_bias_update_speed)
                         : "";
  std::string experts;
  if (s_->o.adam.fuse_expert_update) {
    const int64_t chunk = s_->o.adam.deferred_update_chunk_bytes;
    experts = s_->in_backward ? ", expert weights stepped inside their weight-gradient GEMM"
              : absl::StrCat(", expert gradients recomputed after the norm (their GEMM operands held)",
                             chunk > 0 ? absl::StrFormat(", up to %d MiB of whole experts at a time", chunk >> 20) : "");
  }
  return absl::StrCat("step: ", mode, ", precision ", PrecisionPolicyName(s_->o.precision), zero, bias, experts, ", ",
                      s_->graphs_enabled ? "CUDA graphs after warm-up" : s_->graph_note);
}

absl::Status TrainStep::Launch(const StepInput& input) {
  State& s = *s_;
  if (s.in_flight == (s.cuda ? 2 : 1)) {
    return absl::FailedPreconditionError("TrainStep::Launch: too many steps launched and not waited for");
  }
  if (static_cast<int64_t>(input.micro.size()) != s.o.micro_batches) {
    return absl::InvalidArgumentError(absl::StrCat("TrainStep: ", input.micro.size(), " micro-batches, expected ",
                                                   s.o.micro_batches));
  }
  // The step's device values: lr, F / targets, targets / F, 1 / targets.
  const double targets = static_cast<double>(std::max<int64_t>(1, input.targets_total));
  at::Tensor host_values = at::tensor({static_cast<float>(input.lr), static_cast<float>(s.normaliser / targets),
                                       static_cast<float>(targets / s.normaliser), static_cast<float>(1.0 / targets)},
                                      at::TensorOptions().dtype(at::kFloat));
  UploadInto(s.values, host_values);

  // The graph this step can replay, if any: one per varlen bucket (`sequences`, the number of
  // varlen sequences it takes; 0 without document boundaries) and share of loss rows.
  int64_t key = -1, sequences = -1;
  std::vector<int32_t> cu;
  int64_t max_seqlen = 0;
  const MicroBatchTensors& first = input.micro[0];
  const bool varlen = first.segment_ids.defined() && s.cuda &&
                      PackedRowsUseVarlen(s.model->config(), s.model->options());
  // Packed rows of a sliding-window model take their window mask from segment_ids, and Mamba2
  // layers (Nemotron-H) their state resets, which a graph's varlen boundaries do not carry:
  // those steps run eagerly. Flash sink layers (GPT-OSS) take the window in the kernel.
  const ModelConfig& config = s.model->config();
  const bool sliding = (config.sliding_window > 0 && !SinkLayersUseFlash(config, s.model->options())) ||
                       config.NumMambaLayers() > 0;
  if (s.graphs_enabled && first.input_ids.size(0) == s.o.micro_batch && first.input_ids.size(1) <= s.o.seq_len &&
      (!first.segment_ids.defined() || (varlen && !sliding))) {
    if (varlen) {
      // Rows padded to seq_len: the padding is a segment of its own.
      at::Tensor seg = at::full({s.o.micro_batch, s.o.seq_len}, -1, at::kLong);
      seg.narrow(1, 0, first.segment_ids.size(1)).copy_(first.segment_ids);
      cu = CuSeqlensFromSegmentIds(seg.const_data_ptr<int64_t>(), s.o.micro_batch, s.o.seq_len, &max_seqlen);
    }
    sequences = VarlenBucket(static_cast<int64_t>(cu.size()) - 1, varlen);
  }
  int64_t first_targets = 0, graph_loss_rows = -1;
  if (sequences >= 0) {
    const int64_t graph_tokens = s.o.micro_batch * s.o.seq_len;
    first_targets = first.targets.ne(-100).sum().item<int64_t>();  // a host (CPU) tensor
    if (s.o.loss_skips_ignored_rows) graph_loss_rows = LossRows(graph_tokens, first_targets);
    key = sequences * 9 + LossRowsKey(graph_tokens, graph_loss_rows);
  }

  std::vector<Batch> batches;
  bool replay = false, first_replay_done = false;
#ifdef FTD_WITH_CUDA
  State::Graph* graph = nullptr;
  if (key >= 0) {
    graph = &s.graphs[key];
    // Inputs into the static buffers, padded to [micro_batch, seq_len].
    const int64_t S = first.input_ids.size(1);
    at::Tensor ids = at::zeros({s.o.micro_batch, s.o.seq_len}, at::kLong);
    at::Tensor tgt = at::full({s.o.micro_batch, s.o.seq_len}, -100, at::kLong);
    at::Tensor pos = at::arange(s.o.seq_len, at::kLong).repeat({s.o.micro_batch, 1});
    ids.narrow(1, 0, S).copy_(first.input_ids);
    tgt.narrow(1, 0, S).copy_(first.targets);
    if (first.position_ids.defined()) pos.narrow(1, 0, S).copy_(first.position_ids);
    UploadInto(s.static_ids, ids);
    UploadInto(s.static_targets, tgt);
    UploadInto(s.static_positions, pos);
    Batch b{s.static_ids, s.static_targets, first.position_ids.defined() ? s.static_positions : at::Tensor(), {}};
    if (varlen) {
      // cu_seqlens padded with empty sequences to the bucket, the longest sequence bounded by seq_len.
      std::vector<int32_t> padded = cu;
      padded.resize(static_cast<size_t>(sequences) + 1, cu.back());
      at::Tensor host_cu = at::tensor(at::ArrayRef<int32_t>(padded), at::TensorOptions().dtype(at::kInt));
      if (!graph->cu_seqlens.defined()) {
        graph->cu_seqlens = at::empty({sequences + 1}, host_cu.options().device(s.device));
      }
      UploadInto(graph->cu_seqlens, host_cu);
      b.varlen.cu_seqlens = graph->cu_seqlens;
      b.varlen.max_seqlen = s.o.seq_len;
      b.varlen.num_sequences = sequences;
      b.varlen.total_tokens = s.o.micro_batch * s.o.seq_len;
    }
    b.num_targets = first_targets;
    b.loss_rows = graph_loss_rows;
    b.loss_grad_scale = 1.0 / s.normaliser;
    b.loss_grad_exact = true;
    batches.push_back(std::move(b));
    replay = graph->graph != nullptr;
    if (!replay && graph->eager_steps >= s.o.warmup_before_capture) {
      // Capture the whole step on the compute stream (nothing runs while recording), then replay.
      auto g = std::make_unique<at::cuda::CUDAGraph>();
      absl::Status body;
      try {
        // Thread-local mode: other threads (the data producer, NCCL's watchdog) keep running.
        g->capture_begin(s.pool.value_or(at::cuda::MempoolId_t{0, 0}), cudaStreamCaptureModeThreadLocal);
        body = s.Body(batches, /*capturing=*/true);
        g->capture_end();
      } catch (const std::exception& e) {
        return absl::InternalError(absl::StrCat("capturing the training step as a CUDA graph failed: ",
                                                ExceptionMessage(e), " (set cuda_graphs off to run eagerly)"));
      }
      FTD_RETURN_IF_ERROR(body);
      if (!s.pool) s.pool = g->pool();
      graph->graph = std::move(g);
      replay = true;
      // What the graphs hold from now on: run the new one, return the cached blocks nothing holds,
      // and measure.
      graph->graph->replay();
      DeviceSynchronize();
      ReleaseCachedMemory();
      s.graph_memory_bytes = std::max({s.graph_memory_bytes, PeakMemoryBytes(), ReservedMemoryBytes()});
      first_replay_done = true;
    }
  }
#endif
  if (batches.empty()) {
    for (const MicroBatchTensors& mb : input.micro) {
      Batch b{Upload(mb.input_ids, s.device), Upload(mb.targets, s.device),
              mb.position_ids.defined() ? Upload(mb.position_ids, s.device) : at::Tensor(), mb.segment_ids};
      if (varlen && mb.segment_ids.defined()) {
        // Boundaries from the host ids; cu_seqlens copied without a host wait.
        const at::Tensor seg = mb.segment_ids.to(at::kLong).contiguous();
        std::vector<int32_t> c = CuSeqlensFromSegmentIds(seg.const_data_ptr<int64_t>(), seg.size(0), seg.size(1),
                                                         &b.varlen.max_seqlen);
        b.varlen.num_sequences = static_cast<int64_t>(c.size()) - 1;
        b.varlen.total_tokens = seg.numel();
        b.varlen.cu_seqlens =
            Upload(at::tensor(at::ArrayRef<int32_t>(c), at::TensorOptions().dtype(at::kInt)), s.device);
      }
      b.num_targets = mb.targets.ne(-100).sum().item<int64_t>();  // a host (CPU) tensor
      if (s.o.loss_skips_ignored_rows) b.loss_rows = LossRows(mb.targets.numel(), b.num_targets);
      b.loss_grad_scale = 1.0 / s.normaliser;
      b.loss_grad_exact = true;
      batches.push_back(std::move(b));
    }
  }
  State::InFlight& slot = s.current();
  slot.replayed = false;
  slot.index = s.launches;
  slot.pipelined = s.in_flight > 0;
  try {
#ifdef FTD_WITH_CUDA
    if (replay) {
      if (!first_replay_done) graph->graph->replay();
      slot.replayed = true;
    } else
#endif
    {
      FTD_RETURN_IF_ERROR(s.Body(batches, /*capturing=*/false));
#ifdef FTD_WITH_CUDA
      if (graph) ++graph->eager_steps;
#endif
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(ExceptionMessage(e));
  }
#ifdef FTD_WITH_CUDA
  if (s.cuda) {
    slot.results_host.copy_(s.results, /*non_blocking=*/true);
    slot.done.record();
    s.step_end[slot.index % 3].record();
  }
#endif
  if (!s.cuda) slot.results_host = s.results.clone();
  ++s.in_flight;
  ++s.launches;
  return absl::OkStatus();
}

absl::StatusOr<StepOutcome> TrainStep::Wait() {
  State& s = *s_;
  if (s.in_flight == 0) return absl::FailedPreconditionError("TrainStep::Wait without a launched step");
  State::InFlight& slot = s.slots[s.first_slot];
  s.first_slot = (s.first_slot + 1) % 2;
  --s.in_flight;
  StepOutcome out;
  // Seconds between phase marks i and j of the step, if it ran eagerly.
  std::function<double(size_t, size_t)> between = [&](size_t i, size_t j) {
    return std::chrono::duration<double>(slot.clock[j] - slot.clock[i]).count();
  };
#ifdef FTD_WITH_CUDA
  if (s.cuda) {
    slot.done.synchronize();
    between = [&](size_t i, size_t j) { return slot.events[i].elapsed_time(slot.events[j]) / 1e3; };
    if (slot.pipelined) {
      out.pipelined_seconds =
          s.step_end[(slot.index - 1) % 3].elapsed_time(s.step_end[slot.index % 3]) / 1e3;
    }
  }
#endif
  if (!slot.replayed) {
    const size_t micro = static_cast<size_t>(s.o.micro_batches);
    for (size_t m = 0; m < micro; ++m) {
      out.forward_seconds += between(3 * m, 3 * m + 1);
      out.backward_seconds += between(3 * m + 1, 3 * m + 2);
    }
    out.optimizer_seconds = between(3 * micro, 3 * micro + 1);
  }
  const at::Tensor& r = slot.results_host;
  const float* v = r.const_data_ptr<float>();
  out.loss = v[0];
  const bool norm_known = !s.in_backward || UsesCompactMoments(s.adamw->policy());
  out.grad_norm = norm_known ? v[1] : std::nan("");
  out.expert_load = r.narrow(0, 2, s.moe_layers * s.num_experts)
                        .reshape({s.moe_layers, s.num_experts})
                        .to(at::kDouble)
                        .clone();
  out.replayed = slot.replayed;
  out.graph_memory_bytes = slot.replayed ? s.graph_memory_bytes : 0;
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> TrainStep::StateTensors() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  if (s_->dense) out = s_->dense->StateTensors();
  if (s_->zero3) {
    for (auto& t : s_->zero3->StateTensors()) out.push_back(std::move(t));
  }
  if (s_->adamw) {
    for (auto& t : s_->adamw->StateTensors()) out.push_back(std::move(t));
  }
  return out;
}

absl::Status TrainStep::LoadState(const SafetensorsReader& reader, int64_t steps) {
  if (s_->dense) FTD_RETURN_IF_ERROR(s_->dense->LoadState(reader, steps));
  if (s_->zero3) FTD_RETURN_IF_ERROR(s_->zero3->LoadState(reader, steps));
  if (s_->adamw) FTD_RETURN_IF_ERROR(s_->adamw->LoadState(reader, steps));
  return absl::OkStatus();
}

int64_t TrainStep::OptimizerStateBytes() const {
  return DenseOptimizerStateBytes() + (s_->adamw ? s_->adamw->StateBytes() : 0);
}

int64_t TrainStep::DenseOptimizerStateBytes() const {
  return (s_->dense ? s_->dense->StateBytes() : 0) + (s_->zero3 ? s_->zero3->StateBytes() : 0);
}

int64_t TrainStep::GradientSliceBytes() const {
  return (s_->dense ? s_->dense->slice_numel() * 4 : 0) + (s_->zero3 ? s_->zero3->SliceBytes() : 0);
}

absl::Status TrainStep::GatherParameters() { return s_->zero3 ? s_->zero3->GatherAll() : absl::OkStatus(); }

void TrainStep::ReleaseParameters() {
  if (s_->zero3) s_->zero3->ReleaseAll();
}

int TrainStep::zero_stage() const { return s_->world == 1 ? 0 : s_->zero3 ? 3 : 2; }

}  // namespace ftd::engine
