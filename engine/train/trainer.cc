#include "engine/train/trainer.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <regex>
#include <sstream>

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
#include "engine/dist/zero_optimizer.h"
#include "engine/io/safetensors.h"
#include "engine/model/hf_checkpoint.h"
#include "engine/model/transformer.h"
#include "engine/train/lr_schedule.h"
#include "engine/train/metrics_file.h"
#include "engine/train/optimizer.h"
#include "engine/train/token_dataset.h"
#include "engine/train/training_data.h"
#include "engine/util/device_memory.h"
#include "nlohmann/json.hpp"

namespace ftd::engine {
namespace fs = std::filesystem;
namespace {

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
  ~SigtermGuard() { sigaction(SIGTERM, &previous_, nullptr); }

 private:
  struct sigaction previous_ {};
};

// Seconds since `t0`; on CUDA after the device's queued work has finished, so a phase's time
// is its own (only called around phases, never inside them).
class PhaseTimer {
 public:
  explicit PhaseTimer(bool cuda) : cuda_(cuda) {}
  void Start() {
    if (cuda_) DeviceSynchronize();
    t0_ = std::chrono::steady_clock::now();
  }
  double Stop() {
    if (cuda_) DeviceSynchronize();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }

 private:
  bool cuda_;
  std::chrono::steady_clock::time_point t0_;
};

// The busiest expert's tokens over the mean, averaged over layers; counts [L, E].
double LoadImbalance(const at::Tensor& counts) {
  if (!counts.defined() || counts.numel() == 0) return 0.0;
  at::Tensor c = counts.to(at::kCPU, at::kDouble);
  at::Tensor mean = c.mean(1);
  at::Tensor ratio = at::where(mean.gt(0), std::get<0>(c.max(1)) / mean.clamp_min(1e-12), at::ones_like(mean));
  return ratio.mean().item<double>();
}

struct ResumePoint {
  std::string dir;
  int64_t step = 0;
  DataPosition position;
  int64_t world_size = 1;
  int64_t ep_size = 1;
};

// The newest OUTPUT/checkpoint-N that has a complete training state.
std::optional<ResumePoint> FindResumePoint(const std::string& output) {
  std::optional<ResumePoint> best;
  std::error_code ec;
  if (!fs::is_directory(output, ec)) return best;
  static const std::regex kName("checkpoint-([0-9]+)");
  for (const auto& entry : fs::directory_iterator(output, ec)) {
    std::smatch m;
    std::string name = entry.path().filename().string();
    if (!std::regex_match(name, m, kName)) continue;
    auto state = ReadFileToString((entry.path() / "training_state" / "trainer_state.json").string());
    if (!state.ok()) continue;
    auto j = nlohmann::json::parse(*state, nullptr, false);
    if (j.is_discarded()) continue;
    ResumePoint p{entry.path().string(), j.value("step", int64_t{0}),
                  {j.value("epoch", int64_t{0}), j.value("index", int64_t{0})},
                  j.value("world_size", int64_t{1}), j.value("ep_size", int64_t{1})};
    if (!best || p.step > best->step) best = p;
  }
  return best;
}

void PruneCheckpoints(const std::string& output, int64_t keep_last) {
  if (keep_last <= 0) return;
  static const std::regex kName("checkpoint-([0-9]+)");
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(output, ec)) {
    std::smatch m;
    std::string name = entry.path().filename().string();
    if (std::regex_match(name, m, kName)) found.emplace_back(std::stoll(m[1]), entry.path());
  }
  std::sort(found.begin(), found.end());
  for (size_t i = 0; i + keep_last < found.size(); ++i) (void)RemoveTree(found[i].second.string());
}

void CopyTokenizerFiles(const std::string& from, const std::string& to) {
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                           "special_tokens_map.json", "chat_template.jinja"}) {
    std::error_code ec;
    fs::path src = fs::path(from) / name;
    if (fs::exists(src, ec)) fs::copy_file(src, fs::path(to) / name, fs::copy_options::overwrite_existing, ec);
  }
}

absl::StatusOr<GateMode> GateFromName(const std::string& name) {
  if (name == "real") return GateMode::kReal;
  if (name == "balanced") return GateMode::kBalanced;
  if (name == "skew_first_k") return GateMode::kSkewFirstK;
  if (name == "skew_lower_half") return GateMode::kSkewLowerHalf;
  return absl::InvalidArgumentError(absl::StrCat("backends.gate \"", name, "\" is unknown"));
}

// Everything a rank trains with, built once.
struct RankSetup {
  DistEnv env;
  std::unique_ptr<ProcessGroups> groups;
  ModelConfig config;
  ModelOptions options;
  bool cuda = false;
  std::unique_ptr<MoeTransformer> model;
  std::unique_ptr<ExpertParallelDispatch> dispatch;
  std::vector<NamedParam> dense, experts;
  std::unique_ptr<ShardedAdamW> dense_optimizer;
  std::unique_ptr<AdamW> expert_optimizer;
};

// One optimizer step's collective bookkeeping: the summed gradients' global norm (every
// parameter counted once), clipping, and the update of both optimizers.
absl::StatusOr<double> ReduceClipAndStep(RankSetup& s, double grad_clip, double lr) {
  c10::NoGradGuard no_grad;
  FTD_RETURN_IF_ERROR(s.dense_optimizer->ReduceGradients());
  // Expert gradients: summed over the ranks that hold the same experts.
  std::vector<at::Tensor> expert_grads;
  for (NamedParam& p : s.experts) {
    if (!p.tensor->grad().defined()) p.tensor->mutable_grad() = at::zeros_like(*p.tensor);
    expert_grads.push_back(p.tensor->grad());
  }
  if (!expert_grads.empty() && s.groups->replicas->size() > 1) {
    std::vector<at::Tensor> flat_parts;
    for (const at::Tensor& g : expert_grads) flat_parts.push_back(g.reshape({-1}).to(at::kFloat));
    at::Tensor flat = at::cat(flat_parts);
    FTD_RETURN_IF_ERROR(s.groups->replicas->AllReduce({flat}));
    int64_t offset = 0;
    for (at::Tensor& g : expert_grads) {
      g.view({-1}).copy_(flat.narrow(0, offset, g.numel()));
      offset += g.numel();
    }
  }
  at::Tensor expert_sq = at::zeros({}, at::TensorOptions().device(s.options.device).dtype(at::kFloat));
  for (const at::Tensor& g : expert_grads) expert_sq = expert_sq + g.to(at::kFloat).square().sum();
  // Each expert's gradient lives on num_replicas ranks: count it once.
  at::Tensor total_sq = (s.dense_optimizer->SliceSquaredNorm() + expert_sq / s.groups->mesh.num_replicas())
                            .to(at::kDouble).reshape({1});
  FTD_RETURN_IF_ERROR(s.groups->world->AllReduce({total_sq}));
  const double norm = std::sqrt(total_sq.item<double>());
  if (grad_clip > 0) {
    at::Tensor coef = at::full({}, std::min(1.0, grad_clip / (norm + 1e-6)), at::TensorOptions().dtype(at::kFloat));
    s.dense_optimizer->ScaleGradients(coef);
    for (at::Tensor& g : expert_grads) g.mul_(coef.to(g.device(), g.scalar_type()));
  }
  FTD_RETURN_IF_ERROR(s.dense_optimizer->Step(lr));
  if (!s.experts.empty()) {
    s.expert_optimizer->Step(lr);
    s.expert_optimizer->ZeroGrad();
  }
  return norm;
}

}  // namespace

absl::StatusOr<std::string> RunTraining(const TrainSpec& spec, const TrainOptions& options, std::ostream& log) {
  RankSetup s;
  FTD_ASSIGN_OR_RETURN(s.env, DistEnvFromEnvironment());
  const int rank = s.env.rank, world = s.env.world_size;
  auto rank_error = [rank, world](const absl::Status& st) {
    return absl::Status(st.code(), absl::StrCat("rank ", rank, "/", world, ": ", st.message()));
  };
  std::unique_ptr<MetricsFile> metrics;
  if (!options.metrics_out.empty()) {
    FTD_ASSIGN_OR_RETURN(metrics, MetricsFile::Open(options.metrics_out, rank, world));
  }
  SigtermGuard sigterm;
  FTD_ASSIGN_OR_RETURN(s.config, LoadModelConfig(spec.base_model));
  const ModelConfig& config = s.config;
  s.cuda = spec.device == "cuda" || (spec.device == "auto" && at::hasCUDA());
  if (spec.device == "cuda" && !at::hasCUDA()) return absl::FailedPreconditionError("device: cuda requested but no GPU is visible");
  ModelOptions& mo = s.options;
  if (s.cuda) {
    const int index = s.env.local_rank % std::max<int>(1, static_cast<int>(at::getNumGPUs()));
    mo.device = at::Device(at::kCUDA, index);
#ifdef FTD_WITH_CUDA
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(index));
#endif
  }
  mo.dtype = spec.dtype == "bf16" ? at::kBFloat16 : spec.dtype == "fp32" ? at::kFloat : (s.cuda ? at::kBFloat16 : at::kFloat);
  FTD_ASSIGN_OR_RETURN(mo.gate, GateFromName(spec.gate));
  mo.activation_checkpointing = spec.activation_checkpointing;
  const at::ScalarType save_dtype = DtypeFromName(config.dtype);
  FTD_ASSIGN_OR_RETURN(PrecisionPolicy policy, ParsePrecisionPolicy(spec.precision));
  if (spec.global_batch % (static_cast<int64_t>(world) * spec.micro_batch) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("hyperparameters.global_batch (", spec.global_batch,
                                                   ") must be a multiple of micro_batch (", spec.micro_batch,
                                                   ") times the number of ranks (", world, ")"));
  }

  // Process groups and the layout.
  auto groups = CreateProcessGroups(s.env, static_cast<int>(spec.ep_size), config.num_experts,
                                    s.cuda ? CommBackend::kNccl : CommBackend::kGloo);
  if (!groups.ok()) return rank_error(groups.status());
  s.groups = std::move(*groups);
  const ParallelMesh& mesh = s.groups->mesh;
  Communicator& world_group = *s.groups->world;
  mo.expert_begin = mesh.expert_begin();
  mo.expert_count = mesh.experts_per_rank();

  // Data (engine/train/training_data.h): every record validated now (file:line errors before
  // step 1) and the rows planned from the documents' lengths; then streamed: a background thread
  // tokenizes and packs each rank's rows ahead of training. Every rank follows the same order and
  // takes its own slice of each global batch.
  std::ostringstream data_log;  // ranks other than 0 do not repeat rank 0's data report
  FTD_ASSIGN_OR_RETURN(std::unique_ptr<TrainingData> dataset,
                       TrainingData::Open(spec, config.vocab_size, rank == 0 ? log : data_log));
  const int64_t per_step = spec.global_batch, per_rank = spec.global_batch / world;
  const int64_t total_steps =
      spec.max_steps > 0 ? spec.max_steps : spec.epochs * ((dataset->num_rows() + per_step - 1) / per_step);
  FTD_ASSIGN_OR_RETURN(LrSchedule schedule, LrSchedule::Create(spec.schedule, spec.lr, spec.warmup_steps, total_steps));

  // Where to start: every rank must pick the same checkpoint.
  std::optional<ResumePoint> resume = options.resume ? FindResumePoint(spec.output) : std::nullopt;
  {
    at::Tensor found = at::full({2}, resume ? static_cast<double>(resume->step) : -1.0,
                                at::TensorOptions().dtype(at::kDouble).device(world_group.device()));
    found[1].mul_(-1);
    if (absl::Status st = world_group.AllReduce({found}, ReduceKind::kMax); !st.ok()) return rank_error(st);
    at::Tensor cpu = found.to(at::kCPU);
    const double mine = resume ? static_cast<double>(resume->step) : -1.0;
    if (cpu[0].item<double>() != mine || -cpu[1].item<double>() != mine) {
      return rank_error(absl::FailedPreconditionError(absl::StrCat(
          "ranks disagree on the checkpoint to resume from under ", spec.output,
          " (is the output directory on a filesystem every rank shares?)")));
    }
  }
  if (resume && (resume->world_size != world || resume->ep_size != spec.ep_size)) {
    return absl::FailedPreconditionError(absl::StrCat(
        resume->dir, " was written by ", resume->world_size, " ranks with ep_size ", resume->ep_size,
        "; resuming needs the same layout (this run: ", world, " ranks, ep_size ", spec.ep_size, ")"));
  }
  const std::string weights_dir = resume ? resume->dir : spec.base_model;
  // Straight into shards: this rank reads the dense tensors and its own experts only.
  FTD_ASSIGN_OR_RETURN(ModelWeights weights, LoadHfWeights(weights_dir, config, mo));
  EnableGradients(weights);
  FTD_ASSIGN_OR_RETURN(s.model, MoeTransformer::Create(config, mo, std::move(weights)));
  s.dispatch = std::make_unique<ExpertParallelDispatch>(s.groups->ep.get(), config.num_experts);
  // ep 1: every expert is local, so the layer keeps its own permute -> grouped GEMM path (the
  // fused CUDA kernels); ep > 1: tokens are exchanged with the ep group.
  if (mesh.ep_size() > 1) s.model->SetTokenDispatch(s.dispatch->AsTokenDispatch());
  for (NamedParam& p : s.model->Parameters()) (p.expert ? s.experts : s.dense).push_back(p);
  AdamWConfig adam{spec.adam_beta1, spec.adam_beta2, spec.adam_eps, spec.weight_decay};
  FTD_ASSIGN_OR_RETURN(s.dense_optimizer, ShardedAdamW::Create(s.dense, &world_group, policy, adam));
  FTD_ASSIGN_OR_RETURN(s.expert_optimizer, AdamW::Create(s.experts, policy, adam));

  int64_t step = 0;
  DataPosition position;
  if (resume) {
    std::string state_file = absl::StrCat(resume->dir, "/training_state/", RankStateFileName(rank, world));
    absl::Status loaded = [&]() -> absl::Status {
      FTD_ASSIGN_OR_RETURN(auto reader, SafetensorsReader::Open(state_file));
      FTD_RETURN_IF_ERROR(s.dense_optimizer->LoadState(*reader, resume->step));
      return s.expert_optimizer->LoadState(*reader, resume->step);
    }();
    if (!loaded.ok()) return rank_error(loaded);
    step = resume->step;
    position = resume->position;
    if (rank == 0) {
      log << "resumed from " << resume->dir << " at step " << step << " (epoch " << position.epoch << ", sample "
          << position.index << ")\n";
    }
  } else if (options.resume && rank == 0) {
    log << "no checkpoint to resume under " << spec.output << "; starting from " << spec.base_model << "\n";
  }
  std::error_code ec;
  fs::create_directories(spec.output, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create output ", spec.output, ": ", ec.message()));

  if (rank == 0) {
    log << absl::StrFormat("model %s: %d layers, %d experts (top-%d), %.1fM parameters (%.1fM active); "
                           "device %s, dtype %s, precision %s, gate %s; %d samples, %d steps\n",
                           config.model_type, config.num_hidden_layers, config.num_experts,
                           config.num_experts_per_tok, config.TotalParameters() / 1e6,
                           config.ActiveParameters() / 1e6, s.cuda ? "cuda" : "cpu", DtypeName(mo.dtype),
                           spec.precision, spec.gate, dataset->num_rows(), total_steps);
    log << absl::StrFormat("parallel: %d ranks (%s), dp %d, ep %d (%d experts per rank), %d expert replicas; "
                           "ZeRO-2 over dp; %d sequences per rank per step in micro-batches of %d\n",
                           world, CommBackendName(s.groups->backend), world, mesh.ep_size(),
                           mesh.experts_per_rank(), mesh.num_replicas(), per_rank, spec.micro_batch);
  }
  RankMemory memory = AccountRankMemory(s.model->Parameters(), policy, s.dense_optimizer->StateBytes(),
                                        s.dense_optimizer->slice_numel() * 4);
  log << FormatRankMemory(memory, rank, world) << "\n";
  log.flush();

  FTD_ASSIGN_OR_RETURN(std::unique_ptr<TrainingStream> stream, dataset->Stream(position, rank, world, per_step));
  std::string last_checkpoint;
  auto save = [&](int64_t at_step) -> absl::Status {
    std::string dir = absl::StrCat(spec.output, "/checkpoint-", at_step);
    DistCheckpointParts parts;
    parts.config = &config;
    parts.weights = &s.model->weights();
    parts.options = &mo;
    parts.dtype = save_dtype;
    parts.rank_state = s.dense_optimizer->StateTensors();
    for (auto& t : s.expert_optimizer->StateTensors()) parts.rank_state.push_back(std::move(t));
    nlohmann::json st = {{"step", at_step},          {"epoch", position.epoch},    {"index", position.index},
                         {"seed", spec.seed},        {"total_steps", total_steps}, {"world_size", world},
                         {"ep_size", mesh.ep_size()}};
    parts.finalize = [&](const std::string& tmp) -> absl::Status {
      FTD_RETURN_IF_ERROR(WriteFileAtomically(tmp + "/training_state/trainer_state.json", st.dump(2)));
      CopyTokenizerFiles(spec.base_model, tmp);
      return absl::OkStatus();
    };
    FTD_RETURN_IF_ERROR(SaveDistributedCheckpoint(dir, mesh, world_group, std::move(parts)));
    if (rank == 0) {
      PruneCheckpoints(spec.output, spec.keep_last);
      log << "checkpoint " << dir << "\n";
      if (metrics) FTD_RETURN_IF_ERROR(metrics->WriteCheckpoint(at_step, dir));
    }
    last_checkpoint = dir;
    return absl::OkStatus();
  };

  auto f64 = at::TensorOptions().dtype(at::kDouble).device(world_group.device());
  const int64_t moe_layers = config.NumMoeLayers();

  // Eval loss over the whole validation set: rank r takes rows r, r + world, ... in micro-batches
  // (each micro-batch's rows read, tokenized and packed, as it is formed); every rank runs the
  // same number of forwards (expert parallelism exchanges tokens in each), a rank short of rows
  // runs a row without targets. Cross-entropy only (no aux loss), summed over ranks and divided
  // by the number of targets, as HF's eval loss.
  const TokenSequence no_targets{{0, 0}, {}, {-100, -100}, {0, 1}, {0, 0}};
  auto evaluate = [&]() -> absl::StatusOr<std::pair<double, int64_t>> {
    c10::NoGradGuard no_grad;
    const int64_t rows = dataset->num_validation_rows();
    const int64_t per_forward = world * spec.micro_batch;
    const int64_t forwards = (rows + per_forward - 1) / per_forward;
    at::Tensor sums = at::zeros({2}, f64);  // [loss_sum, targets]
    try {
      for (int64_t m = 0; m < forwards; ++m) {
        const int64_t first = (m * world + rank) * spec.micro_batch;  // this micro-batch's rows follow it
        std::vector<TokenSequence> mine;
        if (first < rows) {
          FTD_ASSIGN_OR_RETURN(std::unique_ptr<RowReader> reader, dataset->ReadValidation(first, spec.micro_batch));
          FTD_ASSIGN_OR_RETURN(mine, reader->Take(spec.micro_batch));
        }
        std::vector<const TokenSequence*> seqs;
        for (int64_t i = 0; i < spec.micro_batch; ++i) {
          seqs.push_back(i < static_cast<int64_t>(mine.size()) ? &mine[i] : &no_targets);
        }
        MicroBatchTensors mb = CollateMicroBatch(seqs, spec.seq_len);
        Batch batch{mb.input_ids.to(mo.device), mb.targets.to(mo.device),
                    mb.position_ids.defined() ? mb.position_ids.to(mo.device) : at::Tensor(),
                    mb.segment_ids};  // stays on the CPU: Forward builds the attention boundaries there
        ForwardResult fr = s.model->Forward(batch, /*return_logits=*/false);
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
  };
  PhaseTimer timer(s.cuda);
  int64_t steps_this_run = 0;
  bool stopped_by_signal = false;
  while (step < total_steps) {
    auto t0 = std::chrono::steady_clock::now();
    if (s.cuda) ResetPeakMemory();
    // This rank's rows of the step (from the background producer; data_wait: time it was behind).
    const double waited_before = stream->stats().consumer_wait_seconds;
    auto rows = stream->TakeStep();
    if (!rows.ok()) return rank_error(rows.status());
    const double data_wait_seconds = stream->stats().consumer_wait_seconds - waited_before;
    position = stream->position();
    std::vector<MicroBatchTensors> micro;
    int64_t targets_local = 0, tokens_local = 0;
    for (int64_t m = 0; m < per_rank / spec.micro_batch; ++m) {
      std::vector<const TokenSequence*> seqs;
      for (int64_t i = 0; i < spec.micro_batch; ++i) seqs.push_back(&(*rows)[m * spec.micro_batch + i]);
      MicroBatchTensors mb = CollateMicroBatch(seqs, spec.seq_len);
      targets_local += mb.targets.ne(-100).sum().item<int64_t>();
      tokens_local += mb.input_ids.numel();
      micro.push_back(std::move(mb));
    }
    // The loss is normalised by the global number of targets, so the summed gradients equal
    // those of one process on the whole global batch.
    at::Tensor counts = at::tensor({static_cast<double>(targets_local), static_cast<double>(tokens_local)}, f64);
    if (absl::Status st = world_group.AllReduce({counts}); !st.ok()) return rank_error(st);
    at::Tensor counts_cpu = counts.to(at::kCPU);
    const int64_t targets_total = static_cast<int64_t>(counts_cpu[0].item<double>());
    const int64_t tokens = static_cast<int64_t>(counts_cpu[1].item<double>());
    const double num_micro_global = static_cast<double>(spec.global_batch / spec.micro_batch);

    double loss_local = 0, forward_seconds = 0, backward_seconds = 0;
    // Tokens per expert over this rank's micro-batches, [L, E] (summed over ranks below).
    at::Tensor expert_load = at::zeros({moe_layers, config.num_experts}, f64);
    try {
      for (MicroBatchTensors& mb : micro) {
        timer.Start();
        Batch batch{mb.input_ids.to(mo.device), mb.targets.to(mo.device),
                    mb.position_ids.defined() ? mb.position_ids.to(mo.device) : at::Tensor(),
                    mb.segment_ids};  // stays on the CPU: Forward builds the attention boundaries there
        ForwardResult fr = s.model->Forward(batch, /*return_logits=*/false);
        at::Tensor loss = fr.loss_sum / static_cast<double>(std::max<int64_t>(1, targets_total));
        if (fr.aux_loss.defined()) loss = loss + config.router_aux_loss_coef * fr.aux_loss / num_micro_global;
        forward_seconds += timer.Stop();
        timer.Start();
        loss.backward();
        backward_seconds += timer.Stop();
        loss_local += loss.item<double>();
        if (static_cast<int64_t>(fr.expert_counts.size()) == moe_layers && moe_layers > 0) {
          expert_load += at::stack(fr.expert_counts).to(f64);
        }
      }
    } catch (const std::exception& e) {
      return rank_error(absl::UnavailableError(absl::StrCat("step ", step + 1, ": ", ExceptionMessage(e))));
    }
    timer.Start();
    auto grad_norm = ReduceClipAndStep(s, spec.grad_clip, schedule.At(step));
    if (!grad_norm.ok()) return rank_error(grad_norm.status());
    const double optimizer_seconds = timer.Stop();
    // One all-reduce for the step's bookkeeping: the loss, the expert load, and whether any
    // rank was asked to stop (SIGTERM).
    at::Tensor summary = at::cat({at::full({1}, loss_local, f64), expert_load.reshape({-1}),
                                  at::full({1}, g_stop_requested.load() ? 1.0 : 0.0, f64)});
    if (absl::Status st = world_group.AllReduce({summary}); !st.ok()) return rank_error(st);
    at::Tensor summary_cpu = summary.to(at::kCPU);
    const double lr = schedule.At(step);
    ++step;
    ++steps_this_run;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    StepReport r;
    r.rank = rank;
    r.world_size = world;
    r.step = step;
    r.total_steps = total_steps;
    r.loss = summary_cpu[0].item<double>();
    r.grad_norm = *grad_norm;
    r.lr = lr;
    r.tokens = tokens;
    r.step_seconds = seconds;
    r.forward_seconds = forward_seconds;
    r.backward_seconds = backward_seconds;
    r.optimizer_seconds = optimizer_seconds;
    r.tokens_per_second = tokens / seconds;
    r.tokens_per_second_per_gpu = r.tokens_per_second / world;
    r.tflops_per_gpu = config.TrainingFlopsPerToken(spec.seq_len) * tokens / seconds / world / 1e12;
    r.mfu = s.cuda ? r.tflops_per_gpu / kPeakTflops : 0.0;
    r.epoch = position.epoch;
    r.peak_memory_bytes = s.cuda ? PeakMemoryBytes() : 0;
    r.reserved_memory_bytes = s.cuda ? ReservedMemoryBytes() : 0;
    r.expert_load_imbalance = LoadImbalance(summary_cpu.narrow(0, 1, expert_load.numel()).reshape(expert_load.sizes()));
    r.all_to_all_seconds = s.dispatch->TakeAllToAllSeconds();
    const bool stop_requested = summary_cpu[summary_cpu.size(0) - 1].item<double>() > 0;
    if (rank == 0 && spec.log_every > 0 && (step % spec.log_every == 0 || step == total_steps)) {
      log << absl::StrFormat(
          "step %d/%d loss %.6f grad_norm %.4f lr %.3e tokens/s %.1f step_time %.3fs a2a %.3fs data_wait %.3fs\n", step,
          total_steps, r.loss, r.grad_norm, r.lr, r.tokens_per_second, r.step_seconds, r.all_to_all_seconds,
          data_wait_seconds);
      log.flush();
    }
    if (metrics) {
      if (absl::Status st = metrics->WriteStep(r); !st.ok()) return rank_error(st);
    }
    if (options.on_step) options.on_step(r);
    if (spec.eval_every > 0 && (step % spec.eval_every == 0 || step == total_steps)) {
      auto eval = evaluate();
      if (!eval.ok()) return rank_error(eval.status());
      if (rank == 0) {
        log << absl::StrFormat("eval step %d/%d loss %.6f targets %d\n", step, total_steps, eval->first, eval->second);
        log.flush();
        if (metrics) {
          if (absl::Status st = metrics->WriteEval(step, eval->first, eval->second); !st.ok()) return rank_error(st);
        }
      }
    }
    const bool last = step == total_steps;
    const bool periodic = spec.checkpoint_every > 0 && step % spec.checkpoint_every == 0;
    if (last || periodic) {
      if (absl::Status st = save(step); !st.ok()) return rank_error(st);
    }
    const bool stop_after = options.stop_after > 0 && steps_this_run >= options.stop_after;
    if ((stop_after || stop_requested) && !last) {
      if (!periodic) {
        if (absl::Status st = save(step); !st.ok()) return rank_error(st);
      }
      if (stop_requested) {
        stopped_by_signal = true;
        if (rank == 0) log << "stopping at step " << step << " (SIGTERM); resumable from " << last_checkpoint << "\n";
      } else if (rank == 0) {
        log << "stopping after " << steps_this_run << " steps as asked\n";
      }
      break;
    }
  }
  if (last_checkpoint.empty()) last_checkpoint = absl::StrCat(spec.output, "/checkpoint-", step);
  if (rank == 0) {
    const data::ProducerStats data_stats = stream->stats();
    log << absl::StrFormat("data: producer waited %.3f s (ahead, queue full), trainer waited %.3f s (behind) over %d rows\n",
                           data_stats.producer_wait_seconds, data_stats.consumer_wait_seconds,
                           data_stats.samples_delivered);
  }
  if (stopped_by_signal) {
    return rank_error(absl::CancelledError(
        absl::StrCat("stopped by SIGTERM after step ", step, "; resume from ", last_checkpoint)));
  }
  if (metrics && rank == 0 && step == total_steps) {
    if (absl::Status st = metrics->WriteDone(step, last_checkpoint); !st.ok()) return rank_error(st);
  }
  return last_checkpoint;
}

}  // namespace ftd::engine
