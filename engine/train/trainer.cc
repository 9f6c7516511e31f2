#include "engine/train/trainer.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <deque>
#include <filesystem>
#include <optional>
#include <sstream>
#include <stdexcept>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#ifdef FTD_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/dist/dist_checkpoint.h"
#include "engine/dist/dist_env.h"
#include "engine/dist/expert_parallel.h"
#include "engine/dist/memory_accounting.h"
#include "engine/dist/process_groups.h"
#include "engine/io/safetensors.h"
#include "engine/model/core/moe/expert_gemm.h"
#include "engine/model/hf_checkpoint.h"
#include "engine/model/lora.h"
#include "engine/model/transformer.h"
#include "engine/train/checkpoint_dir.h"
#include "engine/train/lr_schedule.h"
#include "engine/train/metrics_file.h"
#include "engine/train/token_dataset.h"
#include "engine/train/train_step.h"
#include "engine/train/training_data.h"
#include "engine/model/core/backends.h"
#include "engine/util/device_memory.h"
#include "nlohmann/json.hpp"

namespace ftd::engine {
namespace fs = std::filesystem;
namespace {

// Whether the checkpoint keeps experts fused, one tensor for all of them (GPT-OSS).
bool HasFusedExperts(const ModelWeights& w) {
  for (const TensorSpec& spec : w.layout) {
    if (spec.expert && spec.expert_names == ExpertNames::kFusedInterleaved) return true;
  }
  return false;
}

constexpr double kPeakTflops = 989.0;  // H100/H200 dense bf16, DESIGN.md's MFU denominator

// SIGTERM asks for a stop at the next step boundary (every rank agrees on it in the step's
// all-reduce, so the ranks stop together and save a resumable checkpoint).
std::atomic<bool> g_stop_requested{false};
extern "C" void OnSigterm(int) { g_stop_requested.store(true); }

class SigtermGuard {
 public:
  SigtermGuard() {
    g_stop_requested.store(false);
    struct sigaction sa {};
    sa.sa_handler = OnSigterm;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, &previous_);
  }
  ~SigtermGuard() {
    if (!keep_catching_) sigaction(SIGTERM, &previous_, nullptr);
  }
  // After a stop that any rank was asked for, the others' SIGTERMs are on their way (the
  // coordinator stops the whole gang): they must not kill this rank while it reports and exits.
  void KeepCatching() { keep_catching_ = true; }

 private:
  struct sigaction previous_ {};
  bool keep_catching_ = false;
};

// The busiest expert's tokens over the mean, averaged over layers; counts [L, E].
double LoadImbalance(const at::Tensor& counts) {
  if (!counts.defined() || counts.numel() == 0) return 0.0;
  at::Tensor c = counts.to(at::kCPU, at::kDouble);
  at::Tensor mean = c.mean(1);
  at::Tensor ratio = at::where(mean.gt(0), std::get<0>(c.max(1)) / mean.clamp_min(1e-12), at::ones_like(mean));
  return ratio.mean().item<double>();
}

absl::StatusOr<GateMode> GateFromName(const std::string& name) {
  if (name == "real") return GateMode::kReal;
  if (name == "balanced") return GateMode::kBalanced;
  if (name == "skew_first_k") return GateMode::kSkewFirstK;
  if (name == "skew_lower_half") return GateMode::kSkewLowerHalf;
  return absl::InvalidArgumentError(absl::StrCat("backends.gate \"", name, "\" is unknown"));
}

// One rank's run: set up once (Create), then Run. Each part is a method a reader can follow:
// the layout and model (Create), the data, where to start (AgreeOnResume), the step loop (Run),
// evaluation, checkpoints and the per-step report.
class Trainer {
 public:
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const TrainSpec& spec, const TrainOptions& options,
                                                         std::ostream& log);
  absl::StatusOr<std::string> Run();

 private:
  Trainer(const TrainSpec& spec, const TrainOptions& options, std::ostream& log)
      : spec_(spec), options_(options), log_(log) {}
  absl::Status SetUpDevice();
  // backends.attention / backends.experts: checked against the device and model, then set.
  absl::Status SetUpBackends();
  absl::Status AgreeOnResume();
  absl::Status LoadModel();
  void LogLayout();
  // This rank's rows of step `index` (0-based), collated into micro-batches (host tensors), the
  // global number of targets and tokens (one all-reduce when there are several ranks), and the
  // data position after them.
  struct Rows {
    StepInput input;
    DataPosition position;
    double data_wait_seconds = 0;
    int64_t tokens = 0;
  };
  absl::StatusOr<Rows> NextStep(int64_t index);
  absl::StatusOr<std::pair<double, int64_t>> Evaluate();
  absl::Status SaveCheckpoint(int64_t step);
  StepReport Report(const StepOutcome& outcome, int64_t step, double lr, int64_t tokens, double seconds,
                    const at::Tensor& load_all_ranks);
  absl::Status RankError(const absl::Status& st) const {
    return absl::Status(st.code(), absl::StrCat("rank ", env_.rank, "/", env_.world_size, ": ", st.message()));
  }
  int rank() const { return env_.rank; }
  int world() const { return env_.world_size; }
  bool lora() const { return spec_.method == "lora"; }
  absl::Status AddOrResumeAdapters(ModelWeights& weights);
  // Every expert of an expert adapter tensor of this rank (an all-gather over the ep group).
  at::Tensor GatherExperts(const at::Tensor& local);
  // Fused-expert checkpoints (GPT-OSS) under ep > 1: points `parts` at `gathered` (every expert,
  // on the host) and `all_experts`, for rank 0 to write alone. Collective; a no-op otherwise.
  absl::Status GatherFusedExperts(DistCheckpointParts* parts, ModelWeights* gathered, ModelOptions* all_experts);
  absl::Status SaveMerged();

  const TrainSpec& spec_;
  const TrainOptions& options_;
  std::ostream& log_;
  DistEnv env_;
  std::unique_ptr<MetricsFile> metrics_;
  ModelConfig config_;
  ModelOptions mo_;
  PrecisionPolicy policy_ = PrecisionPolicy::kCompact;
  bool cuda_ = false;
  AttentionBackend attention_ = AttentionBackend::kSdpa;
  ExpertsBackend experts_ = ExpertsBackend::kGroupedMm;
  std::unique_ptr<ProcessGroups> groups_;
  std::unique_ptr<TrainingData> dataset_;
  std::unique_ptr<TrainingStream> stream_;
  int64_t total_steps_ = 0;
  std::optional<LrSchedule> schedule_;
  std::optional<ResumePoint> resume_;
  std::unique_ptr<MoeTransformer> model_;
  std::unique_ptr<ExpertParallelDispatch> dispatch_;
  std::unique_ptr<TrainStep> step_fn_;
  int64_t step_ = 0;
  DataPosition position_;
  std::string last_checkpoint_;
};

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const TrainSpec& spec, const TrainOptions& options,
                                                         std::ostream& log) {
  std::unique_ptr<Trainer> t(new Trainer(spec, options, log));
  FTD_ASSIGN_OR_RETURN(t->env_, DistEnvFromEnvironment());
  if (!options.metrics_out.empty()) {
    FTD_ASSIGN_OR_RETURN(t->metrics_, MetricsFile::Open(options.metrics_out, t->rank(), t->world()));
  }
  FTD_ASSIGN_OR_RETURN(t->config_, LoadModelConfig(spec.base_model));
  FTD_RETURN_IF_ERROR(t->SetUpDevice());
  if (spec.global_batch % (static_cast<int64_t>(t->world()) * spec.micro_batch) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("hyperparameters.global_batch (", spec.global_batch,
                                                   ") must be a multiple of micro_batch (", spec.micro_batch,
                                                   ") times the number of ranks (", t->world(), ")"));
  }
  // Process groups and the layout.
  auto groups = CreateProcessGroups(t->env_, static_cast<int>(spec.ep_size), t->config_.num_experts,
                                    t->cuda_ ? CommBackend::kNccl : CommBackend::kGloo);
  if (!groups.ok()) return t->RankError(groups.status());
  t->groups_ = std::move(*groups);
  t->mo_.expert_begin = t->groups_->mesh.expert_begin();
  t->mo_.expert_count = t->groups_->mesh.experts_per_rank();

  // Data (engine/train/training_data.h): every record validated now (file:line errors before
  // step 1) and the rows planned from the documents' lengths; then streamed: a background thread
  // tokenizes and packs each rank's rows ahead of training. Every rank follows the same order and
  // takes its own slice of each global batch.
  std::ostringstream data_log;  // ranks other than 0 do not repeat rank 0's data report
  FTD_ASSIGN_OR_RETURN(t->dataset_,
                       TrainingData::Open(spec, t->config_.vocab_size, t->rank() == 0 ? log : data_log));
  const int64_t per_step = spec.global_batch;
  t->total_steps_ = spec.max_steps > 0 ? spec.max_steps
                                       : spec.epochs * ((t->dataset_->num_rows() + per_step - 1) / per_step);
  FTD_ASSIGN_OR_RETURN(LrSchedule schedule,
                       LrSchedule::Create(spec.schedule, spec.lr, spec.warmup_steps, t->total_steps_));
  t->schedule_.emplace(std::move(schedule));
  FTD_RETURN_IF_ERROR(t->AgreeOnResume());
  FTD_RETURN_IF_ERROR(t->LoadModel());
  return t;
}

absl::Status Trainer::SetUpDevice() {
  cuda_ = spec_.device == "cuda" || (spec_.device == "auto" && at::hasCUDA());
  if (spec_.device == "cuda" && !at::hasCUDA()) {
    return absl::FailedPreconditionError("device: cuda requested but no GPU is visible");
  }
  if (cuda_) {
    const int index = env_.local_rank % std::max<int>(1, static_cast<int>(at::getNumGPUs()));
    mo_.device = at::Device(at::kCUDA, index);
#ifdef FTD_WITH_CUDA
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(index));
#endif
  }
  mo_.dtype = spec_.dtype == "bf16"   ? at::kBFloat16
              : spec_.dtype == "fp32" ? at::kFloat
                                      : (cuda_ ? at::kBFloat16 : at::kFloat);
  FTD_ASSIGN_OR_RETURN(mo_.gate, GateFromName(spec_.gate));
  mo_.activation_checkpointing = spec_.activation_checkpointing;
  FTD_RETURN_IF_ERROR(SetUpBackends());
  FTD_ASSIGN_OR_RETURN(policy_, ResolveJobPrecision(spec_.precision, mo_.dtype == at::kFloat, lora()));
  return absl::OkStatus();
}

absl::Status Trainer::SetUpBackends() {
  FTD_ASSIGN_OR_RETURN(attention_, ParseAttentionBackend(spec_.attention));
  FTD_ASSIGN_OR_RETURN(experts_, ParseExpertsBackend(spec_.experts));
  if (attention_ != AttentionBackend::kSdpa) {
    const char* name = AttentionBackendName(attention_);
    if (!cuda_) {
      return absl::InvalidArgumentError(absl::StrCat("backends.attention ", name,
                                                     ": a CUDA kernel, and this rank runs on the CPU (use sdpa)"));
    }
    if (mo_.dtype == at::kFloat) {
      return absl::InvalidArgumentError(
          absl::StrCat("backends.attention ", name, ": its kernels take bf16/fp16, and the model runs in fp32 (dtype)"));
    }
  }
  // Sink layers (GPT-OSS): flash forces SinkAttentionFlash (FlashAttention-2 itself, the window
  // in the kernel), cudnn the SDPA form with masks, sdpa lets the engine choose (flash on CUDA).
  if (config_.attention_sinks) {
    mo_.sink_attention = attention_ == AttentionBackend::kFlash   ? SinkAttentionPath::kFlash
                         : attention_ == AttentionBackend::kCudnn ? SinkAttentionPath::kSdpa
                                                                  : SinkAttentionPath::kAuto;
    if (mo_.sink_attention == SinkAttentionPath::kFlash && !SinkLayersUseFlash(config_, mo_)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "backends.attention flash: FlashAttention-2 does not serve this ", config_.model_type,
          " model's sink layers (head_dim ", config_.head_dim, ", ", config_.num_attention_heads, " query and ",
          config_.num_key_value_heads, " key/value heads; use sdpa or cudnn)"));
    }
  }
  if (attention_ == AttentionBackend::kFlash && !config_.attention_sinks) {
    // FlashAttention-2 through SDPA takes no mask: sliding windows need one.
    std::string needs_mask;
    for (int64_t l = 0; l < config_.num_hidden_layers && needs_mask.empty(); ++l) {
      if (config_.IsSlidingLayer(l) && config_.sliding_window < spec_.seq_len) needs_mask = "sliding-window layers";
    }
    if (!needs_mask.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("backends.attention flash: this ", config_.model_type, " model's ",
                                                     needs_mask, " need an attention mask, which FlashAttention-2 "
                                                     "does not take (use sdpa or cudnn)"));
    }
  }
  // cuDNN has no varlen path here: packed rows attend through their document mask.
  mo_.varlen_attention = attention_ != AttentionBackend::kCudnn;
  SetAttentionBackend(attention_);
  SetExpertsBackend(experts_);
  return absl::OkStatus();
}

// Every rank must pick the same checkpoint, written by the same layout.
absl::Status Trainer::AgreeOnResume() {
  resume_ = options_.resume ? FindResumePoint(spec_.output) : std::nullopt;
  Communicator& world_group = *groups_->world;
  at::Tensor found = at::full({2}, resume_ ? static_cast<double>(resume_->step) : -1.0,
                              at::TensorOptions().dtype(at::kDouble).device(world_group.device()));
  found[1].mul_(-1);
  if (absl::Status st = world_group.AllReduce({found}, ReduceKind::kMax); !st.ok()) return RankError(st);
  at::Tensor cpu = found.to(at::kCPU);
  const double mine = resume_ ? static_cast<double>(resume_->step) : -1.0;
  if (cpu[0].item<double>() != mine || -cpu[1].item<double>() != mine) {
    return RankError(absl::FailedPreconditionError(
        absl::StrCat("ranks disagree on the checkpoint to resume from under ", spec_.output,
                     " (is the output directory on a filesystem every rank shares?)")));
  }
  if (resume_ && (resume_->world_size != world() || resume_->ep_size != spec_.ep_size)) {
    return absl::FailedPreconditionError(absl::StrCat(
        resume_->dir, " was written by ", resume_->world_size, " ranks with ep_size ", resume_->ep_size,
        "; resuming needs the same layout (this run: ", world(), " ranks, ep_size ", spec_.ep_size, ")"));
  }
  return absl::OkStatus();
}

absl::Status Trainer::AddOrResumeAdapters(ModelWeights& weights) {
  const bool adapter_checkpoint = resume_ && fs::exists(fs::path(resume_->dir) / "adapter_config.json");
  if (resume_ && adapter_checkpoint != lora()) {
    return absl::FailedPreconditionError(absl::StrCat(resume_->dir, " was written by a method ",
                                                      adapter_checkpoint ? "lora" : "full", " run; this run's method is ",
                                                      spec_.method, " (use another output directory)"));
  }
  if (!lora()) return absl::OkStatus();
  LoraOptions want;
  want.rank = spec_.lora_rank;
  want.alpha = spec_.lora_alpha;
  want.use_rslora = spec_.lora_use_rslora;
  want.targets = 0;
  for (const std::string& t : spec_.lora_targets) {
    uint32_t bit = 0;
    if (!LoraTargetFromName(t, &bit)) return absl::InvalidArgumentError("lora.targets: unknown target " + t);
    want.targets |= bit;
  }
  if (!resume_ && spec_.lora_init_adapter.empty()) return AddLoraAdapters(weights, config_, mo_, want, spec_.seed);
  const std::string from = resume_ ? resume_->dir : spec_.lora_init_adapter;
  absl::StatusOr<LoraOptions> got = LoadPeftAdapter(from, weights, config_, mo_);
  if (!got.ok()) {
    return resume_ ? got.status()
                   : absl::Status(got.status().code(), absl::StrCat("lora.init_adapter: ", got.status().message()));
  }
  if (got->rank != want.rank || got->alpha != want.alpha || got->use_rslora != want.use_rslora) {
    return absl::InvalidArgumentError(absl::StrCat(
        resume_ ? "" : "lora.init_adapter: ", from, " holds a rank ", got->rank, " alpha ", got->alpha,
        got->use_rslora ? " rslora" : "", " adapter; the spec asks for lora.rank ", want.rank, " lora.alpha ",
        want.alpha, want.use_rslora ? " rslora" : ""));
  }
  return absl::OkStatus();
}

absl::Status Trainer::LoadModel() {
  // A LoRA checkpoint holds the adapter only: the base always comes from base_model.
  const std::string weights_dir = resume_ && !lora() ? resume_->dir : spec_.base_model;
  // Straight into shards: this rank reads the dense tensors and its own experts only.
  FTD_ASSIGN_OR_RETURN(ModelWeights weights, LoadHfWeights(weights_dir, config_, mo_));
  FTD_RETURN_IF_ERROR(AddOrResumeAdapters(weights));
  EnableGradients(weights);  // LoRA: the adapters only; the base stays frozen
  FTD_ASSIGN_OR_RETURN(model_, MoeTransformer::Create(config_, mo_, std::move(weights)));
  dispatch_ = std::make_unique<ExpertParallelDispatch>(groups_->ep.get(), config_.num_experts);
  // ep 1: every expert is local, so the layer keeps its own permute -> grouped GEMM path (the
  // fused CUDA kernels); ep > 1: tokens are exchanged with the ep group.
  if (groups_->mesh.ep_size() > 1) model_->SetTokenDispatcher(dispatch_.get());

  TrainStepOptions o;
  o.precision = policy_;
  o.adam = AdamWConfig{spec_.adam_beta1, spec_.adam_beta2, spec_.adam_eps, spec_.weight_decay};
  o.grad_clip = spec_.grad_clip;
  o.micro_batches = spec_.global_batch / world() / spec_.micro_batch;
  o.micro_batch = spec_.micro_batch;
  o.seq_len = spec_.seq_len;
  // A LoRA rank that is not a multiple of 8 runs the experts' adapter GEMMs as a per-expert loop
  // (grouped GEMMs need 16-byte rows), which reads the counts on the host: no graph capture then.
  // So does backends.experts loop.
  o.cuda_graphs = spec_.cuda_graphs && !(lora() && spec_.lora_rank % 8 != 0) && experts_ != ExpertsBackend::kLoop;
  if (spec_.recompute_expert_grads) {
    // The optimizer as the experts' weight-gradient sink (AdamWConfig::fuse_expert_update): served
    // by ftd's grouped GEMM on one CUDA rank, one micro-batch a step, compact state; a setting
    // that would not take effect is refused.
    const char* field = "parallelism.recompute_expert_grads";
    if (!cuda_ || !OwnExpertGemmAvailable()) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": needs ftd's grouped GEMM (an sm90 GPU and a build with CUTLASS); this rank has none"));
    }
    if (world() != 1 || o.micro_batches != 1) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": needs one rank and one micro-batch a step (world ",
                                                     world(), ", ", o.micro_batches, " micro-batches)"));
    }
    if (policy_ != PrecisionPolicy::kCompact) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": needs precision compact, the job runs ", PrecisionPolicyName(policy_)));
    }
    o.adam.fuse_expert_update = true;
    o.adam.deferred_update_chunk_bytes = kRecomputedExpertGradChunkBytes;
  }
  o.zero_stage = spec_.zero_stage;
  o.router_bias_update_speed = spec_.router_bias_update_speed;
  FTD_ASSIGN_OR_RETURN(step_fn_, TrainStep::Create(model_.get(), groups_.get(), dispatch_.get(), o));

  if (resume_) {
    std::string state_file = absl::StrCat(resume_->dir, "/training_state/", RankStateFileName(rank(), world()));
    absl::Status loaded = [&]() -> absl::Status {
      FTD_ASSIGN_OR_RETURN(auto reader, SafetensorsReader::Open(state_file));
      return step_fn_->LoadState(*reader, resume_->step);
    }();
    if (!loaded.ok()) return RankError(loaded);
    step_ = resume_->step;
    position_ = resume_->position;
    if (rank() == 0) {
      log_ << "resumed from " << resume_->dir << " at step " << step_ << " (epoch " << position_.epoch
           << ", sample " << position_.index << ")\n";
    }
  } else if (options_.resume && rank() == 0) {
    log_ << "no checkpoint to resume under " << spec_.output << "; starting from " << spec_.base_model << "\n";
  }
  return absl::OkStatus();
}

void Trainer::LogLayout() {
  const ParallelMesh& mesh = groups_->mesh;
  if (rank() == 0) {
    log_ << absl::StrFormat("model %s: %d layers, %d experts (top-%d), %.1fM parameters (%.1fM active); "
                            "device %s, dtype %s, precision %s, gate %s; %d samples, %d steps\n",
                            config_.model_type, config_.num_hidden_layers, config_.num_experts,
                            config_.num_experts_per_tok, config_.TotalParameters() / 1e6,
                            config_.ActiveParameters() / 1e6, cuda_ ? "cuda" : "cpu", DtypeName(mo_.dtype),
                            PrecisionPolicyName(policy_), spec_.gate, dataset_->num_rows(), total_steps_);
    log_ << absl::StrFormat("parallel: %d ranks (%s), dp %d, ep %d (%d experts per rank), %d expert replicas; "
                            "ZeRO-%d over dp; %d sequences per rank per step in micro-batches of %d\n",
                            world(), CommBackendName(groups_->backend), world(), mesh.ep_size(),
                            mesh.experts_per_rank(), mesh.num_replicas(), step_fn_->zero_stage(),
                            spec_.global_batch / world(),
                            spec_.micro_batch);
    log_ << step_fn_->Describe() << "\n";
    if (cuda_) log_ << "CUDA caching allocator: " << DeviceAllocatorSetting() << "\n";
    if (config_.attention_sinks) {
      log_ << (SinkLayersUseFlash(config_, mo_)
                   ? "attention sinks: FlashAttention-2 with the sink applied to its outputs (window in the kernel, "
                     "packed rows as varlen sequences)\n"
                   : "attention sinks: SDPA with each sink as one more key (window and document masks)\n");
    }
  }
  if (lora()) {
    int64_t adapter = 0, adapter_experts = 0, frozen_bytes = 0;
    for (const NamedParam& p : model_->Parameters()) (p.expert ? adapter_experts : adapter) += p.tensor->numel();
    for (const TensorSpec& spec : model_->weights().layout) {
      const at::Tensor& t = SlotTensor(model_->weights(), spec);
      if (t.defined() && !(spec.slot == Slot::kLmHead && model_->weights().tied)) frozen_bytes += t.nbytes();
    }
    LoraOptions o;
    o.rank = spec_.lora_rank;
    o.alpha = spec_.lora_alpha;
    o.use_rslora = spec_.lora_use_rslora;
    log_ << absl::StrFormat(
        "rank %d/%d lora: rank %d, alpha %g (scale %g), %d adapter parameters (%d on this rank's experts), %s "
        "AdamW state; frozen base %.3f MiB (no gradients, no optimizer state)\n",
        rank(), world(), o.rank, o.alpha, o.scale(), adapter + adapter_experts, adapter_experts,
        PrecisionPolicyName(policy_),
        static_cast<double>(frozen_bytes) / (1 << 20));
  }
  // Several ranks: the ZeRO slice's state (the expert AdamW's is counted per parameter).
  const int64_t dense_state = world() > 1 ? step_fn_->DenseOptimizerStateBytes() : -1;
  RankMemory memory = AccountRankMemory(model_->Parameters(), policy_, dense_state, step_fn_->GradientSliceBytes());
  log_ << FormatRankMemory(memory, rank(), world()) << "\n";
  log_.flush();
}

absl::StatusOr<Trainer::Rows> Trainer::NextStep(int64_t index) {
  Rows out;
  const double waited_before = stream_->stats().consumer_wait_seconds;
  FTD_ASSIGN_OR_RETURN(std::vector<TokenSequence> rows, stream_->TakeStep());
  out.data_wait_seconds = stream_->stats().consumer_wait_seconds - waited_before;
  out.position = stream_->position();
  int64_t targets_local = 0, tokens_local = 0;
  const int64_t per_rank = spec_.global_batch / world();
  for (int64_t m = 0; m < per_rank / spec_.micro_batch; ++m) {
    std::vector<const TokenSequence*> seqs;
    for (int64_t i = 0; i < spec_.micro_batch; ++i) seqs.push_back(&rows[m * spec_.micro_batch + i]);
    MicroBatchTensors mb = CollateMicroBatch(seqs, spec_.seq_len);  // host tensors: no device sync
    targets_local += mb.targets.ne(-100).sum().item<int64_t>();
    tokens_local += mb.input_ids.numel();
    out.input.micro.push_back(std::move(mb));
  }
  // The loss is normalised by the global number of targets, so the summed gradients equal
  // those of one process on the whole global batch.
  out.input.targets_total = targets_local;
  out.tokens = tokens_local;
  if (world() > 1) {
    at::Tensor counts = at::tensor({static_cast<double>(targets_local), static_cast<double>(tokens_local)},
                                   at::TensorOptions().dtype(at::kDouble).device(groups_->world->device()));
    FTD_RETURN_IF_ERROR(groups_->world->AllReduce({counts}));
    at::Tensor cpu = counts.to(at::kCPU);
    out.input.targets_total = static_cast<int64_t>(cpu[0].item<double>());
    out.tokens = static_cast<int64_t>(cpu[1].item<double>());
  }
  out.input.lr = schedule_->At(index);
  return out;
}

// Eval loss over the whole validation set: rank r takes rows r, r + world, ... in micro-batches
// (each micro-batch's rows read, tokenized and packed, as it is formed); every rank runs the
// same number of forwards (expert parallelism exchanges tokens in each), a rank short of rows
// runs a row without targets. Cross-entropy only (no aux loss), summed over ranks and divided
// by the number of targets, as HF's eval loss.
absl::StatusOr<std::pair<double, int64_t>> Trainer::Evaluate() {
  c10::NoGradGuard no_grad;
  static const TokenSequence kNoTargets{{0, 0}, {}, {-100, -100}, {0, 1}, {0, 0}};
  const int64_t rows = dataset_->num_validation_rows();
  const int64_t per_forward = world() * spec_.micro_batch;
  const int64_t forwards = (rows + per_forward - 1) / per_forward;
  Communicator& world_group = *groups_->world;
  at::Tensor sums = at::zeros({2}, at::TensorOptions().dtype(at::kDouble).device(world_group.device()));
  try {
    for (int64_t m = 0; m < forwards; ++m) {
      const int64_t first = (m * world() + rank()) * spec_.micro_batch;  // this micro-batch's rows follow it
      std::vector<TokenSequence> mine;
      if (first < rows) {
        FTD_ASSIGN_OR_RETURN(std::unique_ptr<RowReader> reader, dataset_->ReadValidation(first, spec_.micro_batch));
        FTD_ASSIGN_OR_RETURN(mine, reader->Take(spec_.micro_batch));
      }
      std::vector<const TokenSequence*> seqs;
      for (int64_t i = 0; i < spec_.micro_batch; ++i) {
        seqs.push_back(i < static_cast<int64_t>(mine.size()) ? &mine[i] : &kNoTargets);
      }
      MicroBatchTensors mb = CollateMicroBatch(seqs, spec_.seq_len);
      Batch batch{mb.input_ids.to(mo_.device), mb.targets.to(mo_.device),
                  mb.position_ids.defined() ? mb.position_ids.to(mo_.device) : at::Tensor(),
                  mb.segment_ids};  // stays on the CPU: Forward builds the attention boundaries there
      // Counted on the host (no device read); lm_head runs on exactly the rows with a target.
      batch.num_targets = mb.targets.ne(-100).sum().item<int64_t>();
      batch.loss_rows = batch.num_targets;
      ForwardResult fr = model_->Forward(batch, /*return_logits=*/false);
      sums[0] += fr.loss_sum.to(at::kDouble);
      sums[1] += static_cast<double>(fr.num_targets);
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("eval: ", ExceptionMessage(e)));
  }
  FTD_RETURN_IF_ERROR(world_group.AllReduce({sums}));
  at::Tensor cpu = sums.to(at::kCPU);
  const int64_t targets = static_cast<int64_t>(cpu[1].item<double>());
  return std::make_pair(cpu[0].item<double>() / static_cast<double>(std::max<int64_t>(1, targets)), targets);
}

absl::Status Trainer::SaveCheckpoint(int64_t at_step) {
  std::string dir = absl::StrCat(spec_.output, "/checkpoint-", at_step);
  DistCheckpointParts parts;
  parts.config = &config_;
  parts.weights = &model_->weights();
  parts.options = &mo_;
  parts.dtype = DtypeFromName(config_.dtype);
  parts.rank_state = step_fn_->StateTensors();
  ModelWeights gathered;
  ModelOptions all_experts;
  if (!lora()) FTD_RETURN_IF_ERROR(GatherFusedExperts(&parts, &gathered, &all_experts));
  if (lora()) {
    // Every rank takes part in the experts' gathers; rank 0 writes the adapters: PEFT's layout
    // (transformers v5) in DIR, the per-expert layout (vLLM; PEFT converts it too) in DIR/vllm.
    // Experts without a per-expert adapter layout (GPT-OSS's fused ones, Nemotron-H's ungated
    // ones) have PEFT's stacked 3-D layout (lora_A [E*r, in], lora_B [out, r*E] on
    // <block>.experts.*) as their only export.
    parts.adapter = true;
    LoraOptions o;
    o.rank = spec_.lora_rank;
    o.alpha = spec_.lora_alpha;
    o.use_rslora = spec_.lora_use_rslora;
    auto gather = [this](const at::Tensor& t) { return GatherExperts(t); };
    bool per_expert = false;  // the per-expert export differs from PEFT's only with expert adapters
    for (const LoraSite& site : LoraSites(model_->weights())) {
      per_expert |= site.experts != nullptr && site.experts->defined() && HasPerExpertAdapterLayout(*site.spec);
    }
    try {
      parts.adapters.push_back({"", PeftAdapterTensors(model_->weights(), gather),
                                PeftAdapterConfigJson(model_->weights(), o, spec_.base_model)});
      if (per_expert) {
        parts.adapters.push_back({"vllm", PerExpertAdapterTensors(model_->weights(), gather),
                                  PerExpertAdapterConfigJson(model_->weights(), o, spec_.base_model)});
      }
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("gathering the experts' adapters: ", ExceptionMessage(e)));
    }
    for (auto& a : parts.adapters) {
      for (auto& [name, t] : a.tensors) t = t.to(at::kCPU, DtypeFromName(config_.dtype)).contiguous();
    }
  }
  nlohmann::json st = {{"step", at_step},
                       {"method", spec_.method},
                       {"epoch", position_.epoch},
                       {"index", position_.index},
                       {"seed", spec_.seed},
                       {"total_steps", total_steps_},
                       {"world_size", world()},
                       {"ep_size", groups_->mesh.ep_size()},
                       {"precision", PrecisionPolicyName(policy_)}};
  parts.finalize = [&](const std::string& tmp) -> absl::Status {
    FTD_RETURN_IF_ERROR(WriteFileAtomically(tmp + "/training_state/trainer_state.json", st.dump(2)));
    CopyTokenizerFiles(spec_.base_model, tmp);
    return absl::OkStatus();
  };
  // ZeRO-3: the layers' parameters resident while they are written.
  FTD_RETURN_IF_ERROR(step_fn_->GatherParameters());
  absl::Status saved = SaveDistributedCheckpoint(dir, groups_->mesh, *groups_->world, std::move(parts));
  step_fn_->ReleaseParameters();
  FTD_RETURN_IF_ERROR(saved);
  if (rank() == 0) {
    PruneCheckpoints(spec_.output, spec_.keep_last);
    log_ << "checkpoint " << dir << "\n";
    if (metrics_) FTD_RETURN_IF_ERROR(metrics_->WriteCheckpoint(at_step, dir));
  }
  last_checkpoint_ = dir;
  return absl::OkStatus();
}

at::Tensor Trainer::GatherExperts(const at::Tensor& local) {
  Communicator& ep = *groups_->ep;
  if (ep.size() == 1) return local;
  std::vector<int64_t> shape = local.sizes().vec();
  shape[0] *= ep.size();
  at::Tensor in = local.contiguous().to(ep.device());
  at::Tensor gathered = at::empty(shape, in.options());  // ep ranks hold consecutive experts
  if (absl::Status st = ep.AllGather(gathered.view({-1}), in.view({-1})); !st.ok()) {
    throw std::runtime_error(std::string(st.message()));
  }
  return gathered.to(local.device());
}

absl::Status Trainer::GatherFusedExperts(DistCheckpointParts* parts, ModelWeights* gathered,
                                         ModelOptions* all_experts) {
  // Fused expert tensors (GPT-OSS) under expert parallelism: every expert gathered, one tensor at
  // a time onto the host, and rank 0 writes them (the other ranks' copies are dropped).
  if (groups_->mesh.ep_size() == 1 || !HasFusedExperts(model_->weights())) return absl::OkStatus();
  *gathered = model_->weights();
  try {
    for (const TensorSpec& spec : gathered->layout) {
      if (!spec.expert) continue;
      at::Tensor& t = SlotTensor(*gathered, spec);
      at::Tensor full = GatherExperts(t.detach()).to(at::kCPU);  // collective: every rank
      t = rank() == 0 ? full : at::Tensor();                      // only rank 0 writes
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("gathering the experts: ", ExceptionMessage(e)));
  }
  *all_experts = mo_;
  all_experts->expert_begin = 0;
  all_experts->expert_count = -1;
  parts->weights = gathered;
  parts->options = all_experts;
  parts->experts_gathered = true;
  return absl::OkStatus();
}

// method lora with lora.merge: OUTPUT/merged, a full HF checkpoint of the base with the adapter
// folded in (W + scale B A), written like any checkpoint of the run (no training state).
absl::Status Trainer::SaveMerged() {
  MergeLoraAdapters(model_->weights());
  const std::string dir = spec_.output + "/merged";
  DistCheckpointParts parts;
  parts.config = &config_;
  parts.weights = &model_->weights();
  parts.options = &mo_;
  parts.dtype = DtypeFromName(config_.dtype);
  parts.write_rank_state = false;
  parts.finalize = [&](const std::string& tmp) -> absl::Status {
    CopyTokenizerFiles(spec_.base_model, tmp);
    return absl::OkStatus();
  };
  ModelWeights gathered;
  ModelOptions all_experts;
  FTD_RETURN_IF_ERROR(GatherFusedExperts(&parts, &gathered, &all_experts));
  FTD_RETURN_IF_ERROR(SaveDistributedCheckpoint(dir, groups_->mesh, *groups_->world, std::move(parts)));
  if (rank() == 0) log_ << "merged checkpoint " << dir << "\n";
  return absl::OkStatus();
}

StepReport Trainer::Report(const StepOutcome& outcome, int64_t step, double lr, int64_t tokens, double seconds,
                           const at::Tensor& load_all_ranks) {
  StepReport r;
  r.rank = rank();
  r.world_size = world();
  r.step = step;
  r.total_steps = total_steps_;
  r.loss = outcome.loss;
  r.grad_norm = outcome.grad_norm;
  r.lr = lr;
  r.tokens = tokens;
  r.step_seconds = seconds;
  r.forward_seconds = outcome.forward_seconds;
  r.backward_seconds = outcome.backward_seconds;
  r.optimizer_seconds = outcome.optimizer_seconds;
  r.tokens_per_second = tokens / seconds;
  r.tokens_per_second_per_gpu = r.tokens_per_second / world();
  r.tflops_per_gpu = config_.TrainingFlopsPerToken(spec_.seq_len) * tokens / seconds / world() / 1e12;
  r.mfu = cuda_ ? r.tflops_per_gpu / kPeakTflops : 0.0;
  r.epoch = position_.epoch;
  // The run's peak so far; a replayed CUDA graph allocates nothing: its memory is the pool
  // measured at capture.
  r.peak_memory_bytes = cuda_ ? std::max(PeakMemoryBytes(), outcome.graph_memory_bytes) : 0;
  r.reserved_memory_bytes = cuda_ ? ReservedMemoryBytes() : 0;
  r.expert_load_imbalance = LoadImbalance(load_all_ranks);
  r.all_to_all_seconds = dispatch_->TakeAllToAllSeconds();
  return r;
}

absl::StatusOr<std::string> Trainer::Run() {
  SigtermGuard sigterm;
  std::error_code ec;
  fs::create_directories(spec_.output, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create output ", spec_.output, ": ", ec.message()));
  LogLayout();
  FTD_ASSIGN_OR_RETURN(stream_, dataset_->Stream(position_, rank(), world(), spec_.global_batch));

  int64_t steps_this_run = 0;
  bool stopped_by_signal = false;
  // Steps launched and not yet read, oldest first. On one GPU the next step is launched before
  // the current one's results are read whenever nothing has to happen between them (no eval,
  // checkpoint or stop), so the device never waits for the host's per-step bookkeeping; with
  // several ranks such decisions are collective, so there the next step's rows are only read
  // while the current step runs.
  std::deque<Rows> in_flight;
  std::optional<absl::StatusOr<Rows>> prefetched;
  auto launch_next = [&]() -> absl::Status {
    const int64_t index = step_ + static_cast<int64_t>(in_flight.size());
    absl::StatusOr<Rows> rows = prefetched ? std::move(*prefetched) : NextStep(index);
    prefetched.reset();
    if (!rows.ok()) return rows.status();
    if (absl::Status st = step_fn_->Launch(rows->input); !st.ok()) {
      return absl::Status(st.code(), absl::StrCat("step ", index + 1, ": ", st.message()));
    }
    in_flight.push_back(std::move(*rows));
    return absl::OkStatus();
  };
  // Whether something happens after step `done` (1-based) of this run's `run_steps`.
  auto boundary = [&](int64_t done, int64_t run_steps) {
    return done >= total_steps_ || (spec_.eval_every > 0 && done % spec_.eval_every == 0) ||
           (spec_.checkpoint_every > 0 && done % spec_.checkpoint_every == 0) ||
           (options_.stop_after > 0 && run_steps >= options_.stop_after) || g_stop_requested.load();
  };
  if (cuda_) ResetPeakMemory();  // the reported peak is the run's so far
  // A step's time runs from the previous step's results to its own (from the start for the first);
  // a step launched while the previous one ran is timed on the device instead
  // (StepOutcome::pipelined_seconds): the host reads its predecessor's results only after
  // launching it, so the host clock would charge it to the predecessor.
  auto t_prev = std::chrono::steady_clock::now();
  if (step_ < total_steps_) {
    if (absl::Status st = launch_next(); !st.ok()) return RankError(st);
  }
  bool stopping = false;
  while (!in_flight.empty()) {
    if (world() == 1 && cuda_) {  // (on the CPU a step runs inside Launch: nothing to overlap)
      if (!stopping && in_flight.size() == 1 && !boundary(step_ + 1, steps_this_run + 1)) {
        if (absl::Status st = launch_next(); !st.ok()) return RankError(st);
      }
    } else if (step_ + 1 < total_steps_ && !prefetched) {
      // The rows only (every rank alike: reading them is collective), while the step runs.
      prefetched = NextStep(step_ + 1);
    }
    auto outcome = step_fn_->Wait();
    if (!outcome.ok()) return RankError(outcome.status());
    if (spec_.recompute_expert_grads && steps_this_run == 0 && step_fn_->expert_weights_from_gemm() == 0) {
      // Accepted but without effect: ftd's grouped GEMM serves expert weights at least 128 wide
      // whose update rows are whole 256-element blocks (kernels/grouped_gemm_adamw.h).
      return RankError(absl::InvalidArgumentError(
          "parallelism.recompute_expert_grads: none of this model's expert weights is served by ftd's grouped "
          "GEMM (hidden and expert widths of at least 128, rows of whole 256-element blocks); turn it off"));
    }
    Rows rows = std::move(in_flight.front());
    in_flight.pop_front();
    // One all-reduce for the step's bookkeeping: the loss, the expert load, and whether any rank
    // was asked to stop (SIGTERM).
    at::Tensor load = outcome->expert_load;
    double loss = outcome->loss;
    bool stop_requested = g_stop_requested.load();
    if (world() > 1) {
      auto f64 = at::TensorOptions().dtype(at::kDouble);
      at::Tensor summary = at::cat({at::full({1}, loss, f64), load.reshape({-1}),
                                    at::full({1}, stop_requested ? 1.0 : 0.0, f64)})
                               .to(groups_->world->device());
      if (absl::Status st = groups_->world->AllReduce({summary}); !st.ok()) return RankError(st);
      at::Tensor cpu = summary.to(at::kCPU);
      loss = cpu[0].item<double>();
      load = cpu.narrow(0, 1, load.numel()).reshape(load.sizes());
      stop_requested = cpu[cpu.size(0) - 1].item<double>() > 0;
    }
    ++step_;
    ++steps_this_run;
    position_ = rows.position;
    const bool last = step_ == total_steps_;
    const auto t_now = std::chrono::steady_clock::now();
    const double host_seconds = std::chrono::duration<double>(t_now - t_prev).count();
    const double seconds = outcome->pipelined_seconds > 0 ? outcome->pipelined_seconds : host_seconds;
    t_prev = t_now;
    outcome->loss = loss;
    StepReport r = Report(*outcome, step_, rows.input.lr, rows.tokens, seconds, load);
    if (rank() == 0 && spec_.log_every > 0 && (step_ % spec_.log_every == 0 || last)) {
      log_ << absl::StrFormat(
          "step %d/%d loss %.6f grad_norm %.4f lr %.3e tokens/s %.1f step_time %.3fs a2a %.3fs data_wait %.3fs\n",
          step_, total_steps_, r.loss, r.grad_norm, r.lr, r.tokens_per_second, r.step_seconds, r.all_to_all_seconds,
          rows.data_wait_seconds);
      log_.flush();
    }
    if (metrics_) {
      if (absl::Status st = metrics_->WriteStep(r); !st.ok()) return RankError(st);
    }
    if (options_.on_step) options_.on_step(r);
    // A stop asked for while a step was already launched takes effect after that step.
    stopping = stopping || (!last && (stop_requested || (options_.stop_after > 0 && steps_this_run >= options_.stop_after)));
    if (!in_flight.empty()) continue;
    const bool eval_now = spec_.eval_every > 0 && (step_ % spec_.eval_every == 0 || last);
    const bool periodic = spec_.checkpoint_every > 0 && step_ % spec_.checkpoint_every == 0;
    if (eval_now) {
      auto eval = Evaluate();
      if (!eval.ok()) return RankError(eval.status());
      if (rank() == 0) {
        log_ << absl::StrFormat("eval step %d/%d loss %.6f targets %d\n", step_, total_steps_, eval->first,
                                eval->second);
        log_.flush();
        if (metrics_) {
          if (absl::Status st = metrics_->WriteEval(step_, eval->first, eval->second); !st.ok()) {
            return RankError(st);
          }
        }
      }
    }
    if (last || periodic || stopping) {
      if (absl::Status st = SaveCheckpoint(step_); !st.ok()) return RankError(st);
    }
    if (stopping) {
      if (stop_requested || g_stop_requested.load()) {
        stopped_by_signal = true;
        sigterm.KeepCatching();
        if (rank() == 0) {
          log_ << "stopping at step " << step_ << " (SIGTERM); resumable from " << last_checkpoint_ << "\n";
          log_.flush();
        }
      } else if (rank() == 0) {
        log_ << "stopping after " << steps_this_run << " steps as asked\n";
      }
      break;
    }
    if (last) break;
    // Time spent on eval and checkpoints is not the next step's.
    if (eval_now || periodic) t_prev = std::chrono::steady_clock::now();
    if (absl::Status st = launch_next(); !st.ok()) return RankError(st);
  }
  if (last_checkpoint_.empty()) last_checkpoint_ = absl::StrCat(spec_.output, "/checkpoint-", step_);
  if (rank() == 0) {
    const data::ProducerStats data_stats = stream_->stats();
    log_ << absl::StrFormat(
        "data: producer waited %.3f s (ahead, queue full), trainer waited %.3f s (behind) over %d rows\n",
        data_stats.producer_wait_seconds, data_stats.consumer_wait_seconds, data_stats.samples_delivered);
  }
  if (stopped_by_signal) {
    return RankError(absl::CancelledError(
        absl::StrCat("stopped by SIGTERM after step ", step_, "; resume from ", last_checkpoint_)));
  }
  if (lora() && spec_.lora_merge && step_ == total_steps_) {
    if (absl::Status st = SaveMerged(); !st.ok()) return RankError(st);
  }
  if (metrics_ && rank() == 0 && step_ == total_steps_) {
    if (absl::Status st = metrics_->WriteDone(step_, last_checkpoint_); !st.ok()) return RankError(st);
  }
  return last_checkpoint_;
}

}  // namespace

absl::StatusOr<std::string> RunTraining(const TrainSpec& spec, const TrainOptions& options, std::ostream& log) {
  FTD_ASSIGN_OR_RETURN(std::unique_ptr<Trainer> trainer, Trainer::Create(spec, options, log));
  return trainer->Run();
}

}  // namespace ftd::engine
